"""User code that raises: a row whose first feature is negative makes decode raise a plain ValueError, and a
request with more than 100 rows makes postprocess answer one row too few."""
from handlers.tensor import TensorHandler


class StrictRows(TensorHandler):
    def decode(self, request):
        rows, single = super().decode(request)
        if (rows[:, 0] < 0).any():
            raise ValueError("a radius cannot be negative")
        return rows, single

    def postprocess(self, data):
        answers = super().postprocess(data)
        return answers[:-1] if len(data) > 100 else answers
