"""The config file the command line loads for a recipe name (`--config=cluster`) or a run's
config.json (predict and generate without --config): gmvc/main.py passes this file to absl's
config flag with the name as its argument."""
from gmvc.config import base_config, from_dict


def get_config(name=None):
    """The command line's config (gmvc/main.py loads this file with `name`) for a recipe name
    (`--config=cluster`) or a run's config.json (predict and generate without --config);
    without a name, the base config."""
    if name is None:
        return base_config()
    if name.endswith(".json"):
        import json
        with open(name) as f:
            c = from_dict(json.load(f))
        c.lock()
        return c
    from gmvc import recipes
    return recipes.get(name)()
