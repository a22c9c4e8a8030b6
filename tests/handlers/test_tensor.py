"""The tensor handler in-process, on the real tabular archive (an MLP trained at build time)."""
import dataclasses
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from export.archive import build_archive
from export.zoo.tabular import TABULAR_NAME, load_split, tabular_spec
from export.zoo.tabular_mlp import TabularMLP
from handlers.errors import ConfigError
from handlers.tensor import TensorHandler, read_schema
from tskit.testing import load_handler, run_batch, unpack_archive

LABELS = ["malignant", "benign"]


@pytest.fixture(scope="module")
def model_dir(tabular_mar, tmp_path_factory):
    return unpack_archive(tabular_mar, tmp_path_factory.mktemp("tabular-unpacked"))


@pytest.fixture(scope="module")
def handler(model_dir):
    return load_handler(TensorHandler, model_dir, batch_size=4, yaml_overrides={"handler": {"precision": "fp32"}})


@pytest.fixture(scope="module")
def split():
    return load_split()


@pytest.fixture(scope="module")
def reference(model_dir):
    """The archived weights in the archived model class, run directly: what the handler must reproduce."""
    model = TabularMLP()
    model.load_state_dict(torch.load(model_dir / f"{TABULAR_NAME}.pt", weights_only=True))
    return model.eval()


def top1(scores: dict) -> str:
    return next(iter(scores))


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def answer_rows(handler, rows, per_batch: int = 4) -> list:
    """Each row its own request, `per_batch` requests per handle call, as TorchServe batches them."""
    out = []
    for start in range(0, len(rows), per_batch):
        results = run_batch(handler, [{"body": row.tolist()} for row in rows[start:start + per_batch]])
        assert [status for status, _ in results] == [200] * len(results), results
        out += [body for _, body in results]
    return out


def test_held_out_accuracy_through_the_handler(handler, split, reference):
    _, x_test, _, y_test = split
    answers = answer_rows(handler, x_test)
    predicted = np.array([LABELS.index(top1(a)) for a in answers])
    assert (predicted == y_test).mean() >= 0.9
    with torch.inference_mode():
        probs = torch.softmax(reference(torch.from_numpy(x_test)), 1).numpy()
    assert (predicted == probs.argmax(1)).all()
    for answer, p in zip(answers, probs):
        assert list(answer) == [LABELS[i] for i in np.argsort(-p)]  # top-k, highest first
        assert [answer[name] for name in LABELS] == pytest.approx(p.tolist(), abs=1e-5)


def test_many_rows_in_one_request_answer_as_a_list_in_order(handler, split):
    _, x_test, _, _ = split
    singles = answer_rows(handler, x_test[:20])
    [(status, many)] = run_batch(handler, [{"body": x_test[:20].tolist()}])
    assert status == 200 and isinstance(many, list) and len(many) == 20
    assert [list(a) for a in many] == [list(a) for a in singles]
    assert [a[top1(a)] for a in many] == pytest.approx([a[top1(a)] for a in singles], abs=1e-5)


def test_requests_of_different_sizes_share_a_batch(handler, split):
    _, x_test, _, _ = split
    requests = [{"body": x_test[0].tolist()}, {"body": x_test[1:4].tolist()}, {"body": x_test[4:5].tolist()},
                {"body": x_test[5].tolist()}]
    results = run_batch(handler, requests)
    expected = answer_rows(handler, x_test[:6])
    assert [status for status, _ in results] == [200] * 4
    bodies = [body for _, body in results]
    assert isinstance(bodies[0], dict) and isinstance(bodies[3], dict)
    assert [len(bodies[1]), len(bodies[2])] == [3, 1]
    flat = [bodies[0], *bodies[1], *bodies[2], bodies[3]]
    assert [top1(a) for a in flat] == [top1(a) for a in expected]


def test_every_input_encoding(handler, split, model_dir):
    _, x_test, _, _ = split
    row, rows = x_test[7], x_test[7:9]
    names = json.loads((model_dir / "tensor_schema.json").read_text())["feature_names"]
    record = dict(zip(names, row.tolist()))
    encodings = {
        "json row": {"body": row.tolist()},
        "json rows": {"body": rows.tolist()},
        "data key": {"body": {"data": row.tolist()}},
        "inputs key": {"body": {"inputs": rows.tolist()}},
        "instances key": {"body": {"instances": rows.tolist()}},
        "feature record": {"body": record},
        "feature records": {"body": {"data": [record, dict(zip(names, x_test[8].tolist()))]}},
        "json bytes": {"body": json.dumps(rows.tolist()).encode()},
        "json text": {"body": json.dumps(row.tolist())},
        "multipart json": {"data": json.dumps(rows.tolist()).encode()},
        "npy row": {"body": npy(row)},
        "npy float64 rows": {"body": npy(rows.astype(np.float64))},
        "npy fortran": {"body": npy(np.asfortranarray(rows))},
        "safetensors named": {"body": safetensors_bytes({"features": torch.from_numpy(rows),
                                                          "extra": torch.zeros(2)})},
        "safetensors single": {"body": safetensors_bytes({"x": torch.from_numpy(row)})},
        "safetensors bf16": {"body": safetensors_bytes({"x": torch.from_numpy(rows).bfloat16()})},
        "json ints": {"body": np.round(row).astype(int).tolist()},
    }
    results = dict(zip(encodings, run_batch(handler, list(encodings.values()))))
    assert {k: status for k, (status, _) in results.items()} == {k: 200 for k in encodings}
    [(_, expected_row), (_, expected_rows)] = run_batch(handler, [{"body": row.tolist()}, {"body": rows.tolist()}])
    for name, (_, body) in results.items():
        if name == "json ints":
            continue  # rounded features: still a valid answer, not the same one
        if isinstance(body, dict):
            assert top1(body) == top1(expected_row), name
            assert body[top1(body)] == pytest.approx(expected_row[top1(body)], abs=0.02 if "bf16" in name else 1e-5)
        else:
            assert [top1(a) for a in body] == [top1(a) for a in expected_rows], name


def test_pickled_npy_is_refused_without_unpickling(handler, tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    [(status, body)] = run_batch(handler, [{"body": npy(np.array([Payload()], dtype=object))}])
    assert status == 400 and body["type"] == "InvalidNpy" and "object" in body["message"]
    assert not marker.exists()


def safetensors_two():
    return safetensors_bytes({"a": torch.zeros(30), "b": torch.zeros(30)})


ROW = [10.0] * 30


@pytest.mark.parametrize("body, status, kind, fragments", [
    (ROW[:29], 400, "ShapeMismatch", ["expected shape [30]", "got [29]"]),
    ([[ROW]], 400, "ShapeMismatch", ["[n, 30]", "got [1, 1, 30]"]),
    ([ROW, ROW[:5]], 400, "ShapeMismatch", ["ragged", "[5, 30]"]),
    ([], 400, "ShapeMismatch", ["got [0]"]),
    (["x"] * 30, 400, "DTypeMismatch", ["expected numbers (float32)", "got str 'x' at [0]"]),
    (ROW[:3] + [None] + ROW[4:], 400, "DTypeMismatch", ["got null None at [3]"]),
    (ROW[:3] + [True] + ROW[4:], 400, "DTypeMismatch", ["got bool True at [3]"]),
    (ROW[:2] + [float("nan")] + ROW[3:], 400, "NonFinite", ["expected finite numbers", "got nan at [2]"]),
    ([ROW, ROW[:4] + [float("-inf")] + ROW[5:]], 400, "NonFinite", ["got -inf at [1][4]"]),
    (ROW[:5] + [1e39] + ROW[6:], 400, "NonFinite", ["got 1e+39 at [5]", "beyond float32's range"]),
    (b"[1, 2, ", 400, "InvalidPayload", ["neither JSON, .npy nor safetensors"]),
    ("not json", 400, "InvalidPayload", ["not valid JSON"]),
    (b"\x00\x01garbage", 400, "InvalidPayload", []),
    (b"", 400, "BadInput", ["empty"]),
    ({"rows": ROW}, 400, "ShapeMismatch", ["missing ['mean radius'", "unknown ['rows']"]),
    (npy(np.array(["a"] * 30)), 400, "DTypeMismatch", ["expected dtype float32, got str"]),
    (npy(np.ones(30, dtype=np.complex64)), 400, "DTypeMismatch", ["got complex64"]),
    (npy(np.ones(30, dtype=bool)), 400, "DTypeMismatch", ["got bool"]),
    (npy(np.ones((2, 31))), 400, "ShapeMismatch", ["got [2, 31]"]),
    (npy(np.ones(30))[:-8], 400, "InvalidNpy", ["header says 240 bytes of data, got 232"]),
    (npy(np.ones(30)).replace(b"(30,), }" + b" " * 9, b"(99999999999,), }"), 400, "InvalidNpy",
     ["header says 799999999992 bytes"]),  # a lying header allocates nothing
    (safetensors_two(), 400, "ShapeMismatch", ["'features' or a single tensor", "['a', 'b']"]),
    (safetensors_two()[:-10], 400, "InvalidSafetensors", []),
    ([ROW] * 257, 413, "TooManyRows", ["257 examples", "at most 256"]),
])
def test_bad_inputs_get_a_json_4xx_that_says_expected_and_got(handler, body, status, kind, fragments):
    [(got_status, response)] = run_batch(handler, [{"body": body}])
    assert (got_status, response["code"], response["type"]) == (status, status, kind), response
    assert set(response) == {"code", "type", "message"}
    for fragment in fragments:
        assert fragment in response["message"], response["message"]


def test_bad_request_fails_alone_inside_a_batch(handler, split):
    _, x_test, _, _ = split
    good = [{"body": x_test[i].tolist()} for i in range(4)]
    alone = [body for _, body in run_batch(handler, good)]
    batch = [good[0], {"body": ROW[:10]}, good[1], {"body": [float("nan")] * 30}, good[2], {"body": b"junk"},
             good[3]]
    results = run_batch(handler, batch)
    assert [status for status, _ in results] == [200, 400, 200, 400, 200, 400, 200]
    answered = [body for status, body in results if status == 200]
    assert [top1(a) for a in answered] == [top1(a) for a in alone]
    for a, b in zip(answered, alone):
        assert a[top1(a)] == pytest.approx(b[top1(b)], abs=1e-5)
    assert run_batch(handler, [{"body": ROW[:3]}])[0][0] == 400  # an all-bad batch answers too


def test_bf16_precision_keeps_the_accuracy(model_dir, split):
    _, x_test, _, y_test = split
    handler = load_handler(TensorHandler, model_dir, yaml_overrides={"handler": {"precision": "bf16"}})
    assert handler.precision == "bf16"
    [(status, answers)] = run_batch(handler, [{"body": x_test.tolist()}])
    assert status == 200
    assert np.mean([LABELS.index(top1(a)) == y for a, y in zip(answers, y_test)]) >= 0.9


def archive_with_schema(tmp_path, **changes) -> Path:
    """A real archive of the same model whose schema differs by `changes` (None drops a key), unpacked."""
    spec = tabular_spec(str(tmp_path / "store"), tmp_path / "build")
    schema = json.loads(Path(spec.extra_files[0]).read_text())
    for key, value in changes.items():
        if value is None:
            schema.pop(key, None)
        else:
            schema[key] = value
    (tmp_path / "alt").mkdir()
    altered = tmp_path / "alt" / "tensor_schema.json"
    altered.write_text(json.dumps(schema))
    mar = build_archive(dataclasses.replace(spec, extra_files=[str(altered)]))
    return unpack_archive(mar, tmp_path / "unpacked")


def test_without_labels_the_answer_is_the_raw_output(tmp_path, split, reference):
    _, x_test, _, _ = split
    handler = load_handler(TensorHandler, archive_with_schema(tmp_path, labels=None),
                           yaml_overrides={"handler": {"precision": "fp32"}})
    [(s1, one), (s2, many)] = run_batch(handler, [{"body": x_test[0].tolist()}, {"body": x_test[:3].tolist()}])
    with torch.inference_mode():
        logits = reference(torch.from_numpy(x_test[:3])).tolist()
    assert (s1, s2) == (200, 200)
    assert one == pytest.approx(logits[0], abs=1e-4)
    assert [row == pytest.approx(ref, abs=1e-4) for row, ref in zip(many, logits)] == [True] * 3


def test_missing_schema_fails_the_load_with_a_fix(tmp_path):
    """The handler's load fails with the fix; the build loads what it builds once, golden inputs or not, so it is
    refused there with the same message and leaves no archive behind."""
    spec = tabular_spec(str(tmp_path / "store"), tmp_path / "build")
    for without in (dataclasses.replace(spec, extra_files=[]),
                    dataclasses.replace(spec, extra_files=[], golden_inputs=[], reference_inputs=[])):
        with pytest.raises(RuntimeError, match=r"ConfigError: .*--extra-files tensor_schema.json"):
            build_archive(without)
        assert not (tmp_path / "store" / f"{spec.name}.mar").exists()


def test_topk_from_the_config(model_dir, split):
    handler = load_handler(TensorHandler, model_dir, yaml_overrides={"handler": {"topk": 1}})
    [(_, body)] = run_batch(handler, [{"body": split[1][0].tolist()}])
    assert len(body) == 1
    with pytest.raises(ConfigError, match="'topk' must be at least 1"):
        load_handler(TensorHandler, model_dir, yaml_overrides={"handler": {"topk": 0}})


@pytest.mark.parametrize("changes, fragment", [
    ({"dtype": "string"}, "schema 'dtype' must be one of"),
    ({"shape": [29]}, "30 feature_names but shape [29]"),
    ({"shape": "30"}, "schema 'shape' must be a list of positive ints"),
    ({"shape": [30, 0]}, "schema 'shape' must be a list of positive ints"),
    ({"max_rows": 0}, "'max_rows' must be a positive int"),
    ({"labels": ["a", "a"]}, "distinct class names"),
    ({"colour": "red"}, "keys among"),
    ({"baseline": [0.0] * 29}, "'baseline' must be one example of shape [30]"),
    ({"baseline": ["x"] * 30}, "'baseline' must be one example of shape [30]"),
])
def test_bad_schema_is_a_config_error(model_dir, tmp_path, changes, fragment):
    schema = {**json.loads((model_dir / "tensor_schema.json").read_text()), **changes}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    with pytest.raises(ConfigError) as err:
        read_schema(str(tmp_path / "schema.json"))
    assert fragment in str(err.value)


def test_schema_that_is_not_json_is_a_config_error(tmp_path):
    (tmp_path / "schema.json").write_text("{shape: [30]")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_schema(str(tmp_path / "schema.json"))


def test_drift_held_out_rows_stay_low_rescaled_texture_drifts(model_dir, split, caplog):
    """Reference: the training rows (tskit-reference.json). Held-out rows are in distribution; a texture
    measured on a 25% larger scale is not."""
    _, x_test, _, _ = split
    n = len(x_test)
    drift = {"drift_window": n, "drift_min_count": n, "drift_every": n}
    handler = load_handler(TensorHandler, model_dir, batch_size=4, yaml_overrides={"handler": drift})
    assert handler.drift.names == handler.feature_names + ["top1_probability"]

    def psi_after(rows) -> dict[str, float]:
        answer_rows(handler, rows)
        return dict(zip(handler.drift.names, handler.drift.last))

    held_out = psi_after(x_test)
    assert max(held_out.values()) < handler.drift.threshold, held_out
    texture = [i for i, name in enumerate(handler.feature_names) if "texture" in name]
    shifted = x_test.copy()
    shifted[:, texture] *= 1.25
    after = psi_after(shifted)
    assert sorted(handler.drift.drifted) == sorted(handler.feature_names[i] for i in texture), after
    assert "input drift: PSI above 0.20 for mean texture, texture error, worst texture" in caplog.text


EXPLAIN = {"explain": "True"}


def test_attributions_sum_to_the_output_change(handler, split, reference, model_dir):
    """Integrated Gradients' completeness: per row, the attributions add up to f(x) - f(baseline) for the
    target logit; the baseline is the schema's (the training rows' mean), names in feature order."""
    _, x_test, _, _ = split
    schema = json.loads((model_dir / "tensor_schema.json").read_text())
    results = run_batch(handler, [{"body": x_test[i].tolist()} for i in range(4)], headers=[EXPLAIN] * 4)
    with torch.inference_mode():
        logits = reference(torch.from_numpy(x_test[:4]))
        at_baseline = reference(torch.tensor([schema["baseline"]]))[0]
    for (status, body), row in zip(results, logits):
        assert status == 200 and body["method"] == "integrated_gradients"
        t = body["target_index"]
        assert t == int(row.argmax()) and body["target"] == LABELS[t]  # top-1 by default
        assert [name for name, _ in body["attributions"]] == schema["feature_names"]
        total = sum(score for _, score in body["attributions"])
        assert body["output"] == pytest.approx(float(row[t]), abs=1e-4)
        assert body["baseline_output"] == pytest.approx(float(at_baseline[t]), abs=1e-4)
        change = float(row[t] - at_baseline[t])
        assert total == pytest.approx(change, abs=0.02 * abs(change) + 0.02), (total, change)


def test_explanations_several_rows_targets_and_predictions_in_one_batch(handler, split):
    _, x_test, _, _ = split
    results = run_batch(handler, [
        {"body": {"data": x_test[:3].tolist(), "target": "malignant"}},
        {"body": {"data": x_test[3].tolist(), "target": 1}},
        {"body": {"data": x_test[3].tolist(), "target": "unicorn"}},
        {"body": {"data": x_test[3].tolist(), "target": 5}},
        {"body": x_test[0][:29].tolist()},
        {"body": x_test[4].tolist()},
    ], headers=[EXPLAIN] * 5 + [{}])
    assert [status for status, _ in results] == [200, 200, 400, 400, 400, 200]
    rows, one, unicorn, five, _, predicted = (body for _, body in results)
    assert isinstance(rows, list) and len(rows) == 3 and {r["target"] for r in rows} == {"malignant"}
    assert one["target"] == "benign" and len(one["attributions"]) == 30
    assert "unknown explanation target 'unicorn'" in unicorn["message"] and five["type"] == "BadTarget"
    assert top1(predicted) in LABELS


def test_explaining_the_other_class_flips_the_signs(handler, split):
    """Two logits: what argues for one class argues against the other."""
    row = split[1][0].tolist()
    [(_, a), (_, b)] = run_batch(handler, [{"body": {"data": row, "target": 0}}, {"body": {"data": row, "target": 1}}],
                                 headers=[EXPLAIN] * 2)
    biggest = max(a["attributions"], key=lambda pair: abs(pair[1]))[0]
    assert np.sign(dict(a["attributions"])[biggest]) != np.sign(dict(b["attributions"])[biggest])
