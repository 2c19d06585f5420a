"""Which files a method's code fingerprint covers (harness.code_fingerprint)."""
from __future__ import annotations

from harness.code_fingerprint import method_code
from harness.method_api import discover_methods


def test_a_method_fingerprint_covers_its_module_the_shared_helpers_and_the_method_api() -> None:
    # The EditMethod base class moved from methods/base.py (now a re-export) to harness/method_api.py
    # (issue 17.12); an edit there changes what every method runs, so it must still be fingerprinted.
    files = set(method_code(discover_methods().get("random-direction")))
    assert {"methods/random_direction.py", "methods/base.py", "harness/method_api.py",
            "harness/diffusion/sampler.py", "harness/diffusion/hspace.py"} <= files
    assert not any(f.startswith(("harness/store", "harness/worker", "harness/runner")) for f in files), files
