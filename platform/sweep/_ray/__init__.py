"""Everything that imports Ray (``ray``, ``ray.tune``, ``ray.train``) and Optuna lives here."""
