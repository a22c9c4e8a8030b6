"""Imports a package that must be installed where the archive is served (listed in its requirements.txt)."""
import tskit_fixture_dep

from handlers.tensor import TensorHandler


class NeedsDep(TensorHandler):
    def postprocess(self, data):
        return [{"scores": answer, "dep": tskit_fixture_dep.VERSION} for answer in super().postprocess(data)]
