"""TorchServe handlers: one base class (`handlers.base.TskitHandler`) and one subclass per task.

Modules here import each other absolutely (`from handlers.x import ...`): `tskit build` bundles this
package inside every archive, and TorchServe imports the handler file as a top-level module. Importing the
package checks the archive it sits in first (handlers/integrity.py), before any other module of it runs.
"""
from pathlib import Path as _Path

from handlers.integrity import check_enclosing_archive as _check_enclosing_archive

_check_enclosing_archive(_Path(__file__).parent)

from handlers.tasks import TASKS  # noqa: E402  (the registry: tskit build --handler NAME)
