"""The method plug-in API, re-exported: it lives in `harness.method_api` (issue 17.12).

Method modules keep importing from here (`from methods.base import EditMethod, register_method`); the
harness imports `harness.method_api` and never this package.
"""
from harness.method_api import (
    BUILTIN_METHODS_PACKAGE, ENTRY_POINT_GROUP, METHODS, EditMethod, EditOutput, EditRequest, NoOptions,
    PrepareContext, discover_methods, register_method,
)

__all__ = [
    "BUILTIN_METHODS_PACKAGE", "ENTRY_POINT_GROUP", "METHODS", "EditMethod", "EditOutput", "EditRequest",
    "NoOptions", "PrepareContext", "discover_methods", "register_method",
]
