"""Ten models on one TorchServe: five names of the default image archive and five of the SMS text archive, loaded at
start at one worker each (`load_models` with `name=file.mar`, the register API staying off), every one answering
right; each worker's and the frontend's memory read from /proc and the total printed (`pytest -rP`)."""
import concurrent.futures
import json

from export.variants import derive_archive
from export.zoo import DEFAULT_NAME, SAMPLE_TOP1
from tests.e2e.conftest import REPO
from tskit.server import TorchServeProcess
from tskit.workers import frontend_pid, memory, worker_pids

PER_KIND = 5
FRONTEND = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 1, "maxBatchDelay": 5, "responseTimeout": 120}
SPAM = "WINNER!! You have won a £1000 prize! Call 09061701461 now to claim, text STOP to 87121"


def test_ten_models_answer_from_one_server(e2e_store, text_mar, photo_bytes, tmp_path):
    store = tmp_path / "store"  # the archives' own model-config.yaml decides their workers: one each
    files = {"image": derive_archive(e2e_store / f"{DEFAULT_NAME}.mar", store / "image.mar", frontend=FRONTEND),
             "text": derive_archive(text_mar, store / "text.mar", frontend=FRONTEND)}
    names = {f"{kind}_{i}": kind for kind in files for i in range(PER_KIND)}
    models = {name: {"1.0": {"defaultVersion": True, "marName": f"{kind}.mar", **FRONTEND}}
              for name, kind in names.items()}
    overrides = {"load_models": ",".join(f"{name}={kind}.mar" for name, kind in names.items()),
                 "models": json.dumps(models)}
    with TorchServeProcess(tmp_path / "ts", REPO / "config.properties", store, overrides=overrides) as ts:
        c = ts.client
        assert sorted(m["modelName"] for m in c.models()) == sorted(names)

        def answer(name: str):
            body = photo_bytes["coffee.png"] if names[name] == "image" else SPAM.encode()
            return name, c.predict(name, body)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for name, response in pool.map(answer, list(names) * 2):
                assert response.status_code == 200, (name, response.text)
                top1 = max(response.json(), key=response.json().get)
                assert top1 in (SAMPLE_TOP1["coffee.png"] if names[name] == "image" else {"spam"}), (name, top1)
        per_model = {name: [memory(pid) for pid in worker_pids(c, name).values()] for name in names}
        front = memory(frontend_pid(ts.proc.pid))
    assert all(len(workers) == 1 and workers[0] is not None for workers in per_model.values()), per_model
    by_kind = {kind: [per_model[n][0] for n in names if names[n] == kind] for kind in files}
    total = sum(m.pss for workers in per_model.values() for m in workers) + front.pss
    for kind, workers in by_kind.items():
        print(f"{kind}: {len(workers)} models x 1 worker, PSS {min(m.pss for m in workers):.0f}-"
              f"{max(m.pss for m in workers):.0f} MiB, private {min(m.uss for m in workers):.0f}-"
              f"{max(m.uss for m in workers):.0f} MiB, RSS {max(m.rss for m in workers):.0f} MiB each")
    print(f"frontend: RSS {front.rss:.0f} MiB, PSS {front.pss:.0f} MiB; all ten models: total PSS {total:.0f} MiB")
    assert front.rss > 0 and total > front.pss
