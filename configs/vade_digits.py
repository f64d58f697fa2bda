"""VaDE on scikit-learn's 8x8 digits (1,797 x 64), trained from scratch: the `vade` recipe of
gmvc/recipes/ (autoencoder pretraining, a diagonal GMM fitted to the embeddings, then VaDE plus
the cluster-usage term c_marginal; 3 restarts side by side) with a network sized for this small
data (64-256-256-512-10). The GMM fit and the restart kept are the ones using their clusters
most evenly, which suits roughly balanced clusters such as the digits; for clusters of very
different sizes set c_marginal to 0, gmm_init's `select` to likelihood and restart_choice to
objective. Labels are used only to report.
"""
from gmvc import recipes


def get_config():
    return recipes.vade_digits()
