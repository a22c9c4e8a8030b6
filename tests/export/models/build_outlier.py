"""The OutlierNet archive (outlier_net.py): a nearest-centroid classifier of which calibration photo a view comes
from, so its fp32 answers are confident and right, while its plain int8 loses them (see the model file)."""
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MODEL_FILE = Path(__file__).with_name("outlier_net.py")
RESIZE, CROP = 72, 64
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TEMPERATURE = 30.0  # most views confident (top-1 >= 0.5), as a trained classifier's would be


def normalised(payload: bytes) -> torch.Tensor:
    image = Image.open(io.BytesIO(payload)).convert("RGB")
    scale = RESIZE / min(image.size)
    image = image.resize((max(CROP, round(image.size[0] * scale)), max(CROP, round(image.size[1] * scale))),
                         Image.BILINEAR)
    left, top = (image.size[0] - CROP) // 2, (image.size[1] - CROP) // 2
    pixels = np.asarray(image.crop((left, top, left + CROP, top + CROP)), dtype=np.float32) / 255
    return torch.from_numpy(((pixels - MEAN) / STD).transpose(2, 0, 1).astype(np.float32))


def build_outlier_archive(photos: Path, work: Path) -> Path:
    """`tskit build` of OutlierNet fitted to the views of `photos`; returns work/model_store/outlier.mar."""
    from export.archive import ArchiveSpec, build_archive
    from export.views import make_views, read_photos
    from tests.export.models.outlier_net import OutlierNet

    names = sorted(read_photos(photos))
    views = make_views(read_photos(photos), 500)
    inputs = torch.stack([normalised(v.payload) for v in views])
    labels = torch.tensor([names.index(v.photo) for v in views])
    torch.manual_seed(0)
    net = OutlierNet(len(names)).eval()
    with torch.no_grad():
        net.stem.weight[-1], net.stem.bias[-1] = 0.0, 1000.0  # the outlier channel
        net.conv.weight[:, -1] = 0.0  # which the next layer ignores
        features = net.features(inputs)
        centroids = torch.stack([features[labels == k].mean(0) for k in range(len(names))])
        net.head.weight.copy_(2 * TEMPERATURE * centroids)  # -T * |f - c|^2, less the |f|^2 all classes share
        net.head.bias.copy_(-TEMPERATURE * (centroids ** 2).sum(1))
    work.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), work / "outlier.pt")
    (work / "labels.json").write_text(json.dumps({str(i): name.rsplit(".", 1)[0] for i, name in enumerate(names)}))
    config = {"minWorkers": 2, "maxWorkers": 2, "batchSize": 8, "maxBatchDelay": 5,
              "handler": {"resize": RESIZE, "crop": CROP, "mean": MEAN, "std": STD, "topk": 3}}
    return build_archive(ArchiveSpec(name="outlier", serialized_file=str(work / "outlier.pt"),
                                     model_file=str(MODEL_FILE), labels=str(work / "labels.json"), config=config,
                                     export_path=str(work / "model_store")))
