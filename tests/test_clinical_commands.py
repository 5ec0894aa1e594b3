"""The README's clinical commands run as written, on the run its stages block writes (slow).

In a copy of the repository with the kit installed in a virtual environment (`pip install -e .`
of the copy; torch and MONAI come from this Python), the fenced bash block after
`<!-- stages: run by tests/test_readme.py -->` runs command by command, then the one after
`<!-- clinical-commands: run by tests/test_readme.py -->`, then the Python snippet after
`<!-- clinical: ... -->`, which imports the installed names. The block extraction, the copy and
the command runner are tests/test_readme.py's (this test is to be folded into it).
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_readme import CLINICAL_MARKER, README, STAGES_MARKER, block_after, commands, copy_repository, run  # noqa: E402

COMMANDS_MARKER = "<!-- clinical-commands: run by tests/test_readme.py -->"
RUN = "OUT/finetune/shenzhen/Domain_RI/seed0/best.pt"
EVAL = "OUT/eval/shenzhen/Domain_RI/seed0/best"


def kit_environment(tmp_path, repo):
    """PATH with a virtual environment first whose `python` has this Python's packages and the
    copy installed as `domaintl` (editable), as `make` sets it up."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "-e",
                             str(repo)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    env["MPLBACKEND"] = "Agg"
    return env


def run_block(body, repo, env, what):
    for number, command in enumerate(commands(body), start=1):
        result = run(["bash", "-c", command], repo, env)
        assert result.returncode == 0, (f"{what} command {number} failed (exit {result.returncode}):\n{command}\n"
                                        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


@pytest.mark.slow
def test_readme_clinical_commands_run_as_written_on_the_stages_run(tmp_path):
    text = README.read_text()
    stages = block_after(text, STAGES_MARKER, "bash")
    clinical = block_after(text, COMMANDS_MARKER, "bash")
    snippet = block_after(text, CLINICAL_MARKER, "python")
    assert [c.split()[1] for c in commands(clinical)] == ["predict.py", "evaluate.py", "export.py", "export.py"]
    repo = copy_repository(tmp_path / "repo")
    env = kit_environment(tmp_path, repo)
    run_block(stages, repo, env, "stages")
    evaluated = pd.read_csv(repo / EVAL / "predictions.csv")
    run_block(clinical, repo, env, "clinical")
    out = repo / "OUT"

    # predict.py: every demo image of the folder, with its heat map; nothing skipped
    folder = out / "demo_data/shenzhen/ChinaSet_AllFiles/CXR_png"
    predicted = pd.read_csv(out / "predict/shenzhen/predictions.csv")
    assert list(predicted.columns) == ["image", "pred", "prob_normal", "prob_tuberculosis", "cam"]
    assert sorted(Path(p).name for p in predicted["image"]) == sorted(p.name for p in folder.glob("*.png"))
    assert pd.read_csv(out / "predict/shenzhen/skipped.csv").empty
    np.testing.assert_allclose(predicted[["prob_normal", "prob_tuberculosis"]].sum(axis=1), 1, atol=2e-6)
    assert set(predicted["pred"]) <= {"normal", "tuberculosis"}
    for path in predicted["cam"].sample(3, random_state=0):
        with Image.open(repo / path) as png:
            assert png.format == "PNG" and png.size[0] == 2 * png.size[1]
    # ... and on the test images, evaluate.py's numbers: same rows, to 1e-6 when predict.py reads the
    # test images (a CSV); the folder run batches them with other images, which bf16 kernels may round
    # differently, so it is held to 1e-3
    by_name = predicted.assign(name=predicted["image"].map(lambda p: Path(p).name)).set_index("name")
    names = evaluated["image"].map(lambda p: Path(p).name)
    columns = ["prob_normal", "prob_tuberculosis"]
    np.testing.assert_allclose(by_name.loc[names, columns].to_numpy(), evaluated[columns].to_numpy(), atol=1e-3)
    evaluated[["image"]].to_csv(out / "test_images.csv", index=False)
    result = run(["bash", "-c", f"python predict.py --checkpoint {RUN} OUT/test_images.csv --out OUT/predict/test "
                                "--workers 0"], repo, env)
    assert result.returncode == 0, result.stderr[-3000:]
    on_test = pd.read_csv(out / "predict/test/predictions.csv")
    assert on_test["image"].tolist() == evaluated["image"].tolist()
    assert on_test["pred"].tolist() == evaluated["pred"].tolist()
    np.testing.assert_allclose(on_test[columns].to_numpy(), evaluated[columns].to_numpy(), rtol=0, atol=1e-6)

    # evaluate.py --cam 2: the same evaluation, now with heat maps per class and outcome
    again = pd.read_csv(repo / EVAL / "predictions.csv")
    np.testing.assert_allclose(again[columns].to_numpy(), evaluated[columns].to_numpy(), rtol=0, atol=1e-6)
    listed = pd.read_csv(repo / EVAL / "cam/cam.csv")
    assert set(listed["folder"]) <= {f"{c}/{o}" for c in ("normal", "tuberculosis") for o in ("correct", "wrong")}
    assert listed.groupby("folder").size().max() <= 2 and len(listed) >= 2
    assert all((repo / EVAL / "cam" / file).is_file() for file in listed["file"])

    # export.py: TorchScript with its description, the bundle with the test metrics and CIs, the backbone
    extra = {"meta.json": ""}
    import torch

    model = torch.jit.load(str(out / "export/shenzhen/model.ts"), _extra_files=extra)
    assert json.loads(extra["meta.json"])["classes"] == ["normal", "tuberculosis"]
    assert model(torch.zeros(1, 1, 64, 64, dtype=torch.uint8)).shape == (1, 2)
    bundle = out / "export/shenzhen/bundle"
    metrics = pd.read_csv(repo / EVAL / "metrics.csv").iloc[0]
    assert f"| accuracy | {metrics['accuracy']:.4f} | {metrics['accuracy_ci_low']:.4f}" in \
        (bundle / "docs/README.md").read_text()
    assert json.loads((bundle / "configs/metadata.json").read_text())["network_data_format"]["outputs"]["pred"][
        "channel_def"] == {"0": "normal", "1": "tuberculosis"}
    assert (bundle / "models/model.pt").is_file() and (bundle / "configs/inference.json").is_file()
    from kit.models import load_backbone

    assert load_backbone(out / "export/CXR_RI/backbone.pt")(torch.rand(1, 3, 64, 64)).shape == (1, 1024, 2, 2)

    # the Python snippet, with the installed names, from the copy's root
    result = run(["python", "-"], repo, env, input=snippet)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = dict(re.findall(r"^(.+?):\s*([0-9]*\.[0-9]+)\s*$", result.stdout, re.M))
    assert set(printed) == {"normal", "tuberculosis"} and abs(sum(map(float, printed.values())) - 1) < 1e-3
