"""Hypothesis profiles. "ci" (the default) draws new examples every run from a seed printed in the report header
("hypothesis seed: N"); rerun with ``--hypothesis-seed=N`` (or ``TORCHPROX_HYPOTHESIS_SEED=N``) to get the same
examples again. "dev" is a quicker local profile. Derandomize only to reproduce a failure."""
import os
import random

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config):
    """Give every Hypothesis test one seed for the run: from --hypothesis-seed, else TORCHPROX_HYPOTHESIS_SEED,
    else a fresh random one (hypothesis's plugin reads the option when each test runs)."""
    if getattr(config.option, "hypothesis_seed", "absent") is None:
        seed = os.environ.get("TORCHPROX_HYPOTHESIS_SEED")
        config.option.hypothesis_seed = int(seed) if seed else random.SystemRandom().randrange(2**32)


def pytest_report_header(config):
    seed = getattr(config.option, "hypothesis_seed", None)
    return f"hypothesis seed: {seed} (reproduce: --hypothesis-seed={seed} or TORCHPROX_HYPOTHESIS_SEED={seed})"
