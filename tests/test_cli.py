"""The ``jaxddpm`` command line end to end: its outputs, its options, and one-line errors
for bad input that write nothing."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxddpm import cli
from tests.helpers import tiny_argv


def test_sample_writes_a_grid_and_npz(tiny_run, tmp_path, capsys):
    workdir = tiny_run
    out = str(tmp_path / "s.png")
    assert cli.main(["sample", "--workdir", workdir, "--num", "6", "--seed", "3", "--out", out]) == 0
    samples = np.load(str(tmp_path / "s.npz"))["samples"]
    assert samples.shape == (6, 8, 8, 1) and np.all(np.isfinite(samples))
    assert Image.open(out).size[0] > 0
    # Never overwrite: the same --out again is refused.
    assert cli.main(["sample", "--workdir", workdir, "--num", "6", "--out", out]) == 2
    assert "exists" in capsys.readouterr().err


def test_incompatible_workdir_is_refused_and_untouched(tiny_run, capsys):
    workdir = tiny_run
    before = {p: os.path.getmtime(os.path.join(r, p)) for r, _, ps in os.walk(workdir) for p in ps}
    code = cli.main(["train", "--workdir", workdir] + tiny_argv(**{"model.channels": "(4, 16)"}))
    assert code == 2
    err = capsys.readouterr().err
    assert "holds checkpoints of an incompatible config (model.channels [4, 8] -> [4, 16])" in err
    after = {p: os.path.getmtime(os.path.join(r, p)) for r, _, ps in os.walk(workdir) for p in ps}
    assert before == after


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config", "nope"], "unknown config 'nope'"),
        (["--config.train.nope=1"], "unknown config key 'train.nope'"),
        (["--config.train.batch_size=abc"], "is not a valid int"),
        (["--config.diffusion.num_timesteps=0"], "num_timesteps must be a positive integer"),
        (["--config.diffusion.beta_end=2"], "betas must lie in (0, 1)"),
        (["--config.data.image_size=17"], "cannot be halved"),
        (["--config.train.batch_size=-1"], "train.batch_size must be positive"),
        (["--config.data.source=folder", "--config.data.path=/nonexistent/dir"], "is not a readable directory"),
        (["--config.train.batch_size=5000"], "exceeds the dataset's 1500 images"),
        (["--oops"], "unrecognised argument '--oops'"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    workdir = tmp_path / "run"
    code = cli.main(["train", "--workdir", str(workdir)] + argv)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not workdir.exists()


def test_empty_folder_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = cli.main(["train", "--workdir", str(tmp_path / "run"), "--config.data.source=folder", f"--config.data.path={tmp_path / 'empty'}"])
    assert code == 2 and "holds no readable images" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("setup", ["missing", "empty"])
def test_sample_on_missing_or_empty_workdir(tmp_path, capsys, setup):
    workdir = tmp_path / "w"
    if setup == "empty":
        workdir.mkdir()
    assert cli.main(["sample", "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: workdir") and err.count("\n") == 1


def test_cli_subprocess_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "jaxddpm", "train", "--workdir", str(tmp_path / "w"), "--config.train.num_steps=-3"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "train.num_steps" in proc.stderr


@pytest.mark.slow
def test_every_option_end_to_end_from_the_command_line(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    options = dict(
        model__name="ddpm_unet", model__base_channels="8", model__channel_mult="(1, 2)", model__num_res_blocks="1",
        model__attention_resolutions="(4,)", model__norm_groups="4", model__num_classes="10",
        diffusion__schedule="cosine", diffusion__prediction="v", diffusion__min_snr_gamma="5.0",
        sample__sampler="ddim", sample__steps="4", sample__guidance="2.0", train__timestep_sampling="stratified",
    )
    assert cli.main(["train", "--workdir", workdir, *tiny_argv(**options)]) == 0
    out = str(tmp_path / "seven.png")
    argv = ["sample", "--workdir", workdir, "--num", "4", "--sampler", "ddim", "--steps", "5", "--guidance", "3.0", "--label", "7", "--out", out]
    assert cli.main(argv) == 0
    saved = np.load(out.replace(".png", ".npz"))
    assert saved["samples"].shape == (4, 8, 8, 1) and saved["labels"].tolist() == [7] * 4
    assert cli.main(["sample", "--workdir", workdir, "--num", "2", "--sampler", "ancestral", "--out", str(tmp_path / "a.png")]) == 0
    capsys.readouterr()
    assert cli.main(["sample", "--workdir", workdir, "--sampler", "ddim", "--steps", "500", "--out", str(tmp_path / "b.png")]) == 2
    assert capsys.readouterr().err.strip() == "error: --steps=500 must lie in [1, 10] (diffusion.num_timesteps)"
    assert cli.main(["sample", "--workdir", workdir, "--label", "10", "--out", str(tmp_path / "c.png")]) == 2
    assert "must lie in [0, 10)" in capsys.readouterr().err
    assert not (tmp_path / "b.png").exists() and not (tmp_path / "c.png").exists()


def test_a_conditional_model_needs_labelled_data(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(10):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(folder / f"{i}.png")
    argv = tiny_argv(data__source="folder", data__holdout=0, data__path=str(folder), model__num_classes="3")
    assert cli.main(["train", "--workdir", str(tmp_path / "run"), *argv]) == 2
    assert "model.num_classes=3 needs labels in [0, 3) but the dataset has no labels; set model.num_classes=0" in capsys.readouterr().err


def test_version_and_usage(capsys):
    import jaxddpm

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"jaxddpm {jaxddpm.__version__}\n"
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: jaxddpm {train,sample,eval,export,convert,parity,bench} ...   (or: python -m jaxddpm ...)")
    assert "--version" in out


HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "torch", "tensorflow", "tensorflow_datasets", "ml_collections")


def test_every_help_answers_without_loading_jax_or_torch():
    """--help of every command parses and prints before any heavy library is imported
    (each would cost a second or more); checked with those libraries made unimportable."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {HEAVY!r}:\n"
        "            raise ImportError(name + ' was imported before the arguments were parsed')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from jaxddpm import cli\n"
        "for command in list(cli.COMMANDS):\n"
        "    try:\n"
        "        cli.main([command, '--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (command, e.code)\n"
        "    else:\n"
        "        raise AssertionError(command + ' --help did not exit')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--config.SECTION.FIELD=VALUE" in proc.stdout and "--print-config" in proc.stdout
    assert "--num-samples NUM_SAMPLES, --num NUM_SAMPLES" in proc.stdout and "--clip-x0, --no-clip-x0" in proc.stdout


def test_print_config_and_list_configs_write_nothing(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert cli.main(["train", "--workdir", str(workdir), "--print-config", "--config.train.num_steps=7"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["train"]["num_steps"] == 7 and printed["data"]["source"] == "digits"
    assert cli.main(["train", "--workdir", str(workdir), "--print-config", "--config.train.num_steps=x"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not workdir.exists()
    assert cli.main(["train", "--list-configs"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["flowers64", "quickstart"]


def test_sample_stderr_holds_only_its_own_lines(tiny_run, tmp_path):
    """Arguments are checked before any checkpoint is opened, and orbax's own warnings stay
    off the terminal: stderr is empty on success and exactly one line on each error."""
    def run(*args):
        return subprocess.run([sys.executable, "-m", "jaxddpm", "sample", "--workdir", tiny_run, *args],
                              capture_output=True, text=True, timeout=120)

    out = tmp_path / "s.png"
    ok = run("--num-samples", "3", "--out", str(out), "--sampler", "ddim", "--steps", "4", "--no-clip-x0")
    assert ok.returncode == 0 and ok.stderr == "" and out.exists()
    errors = {
        ("--out", str(out)): f"error: {out} exists; choose another --out (existing files are never overwritten)\n",
        ("--sampler", "ddim", "--steps", "0", "--out", str(tmp_path / "b.png")):
            "error: --steps=0 must lie in [1, 10] (diffusion.num_timesteps)\n",
        ("--label", "3", "--out", str(tmp_path / "c.png")):
            "error: --label and --guidance need a class-conditional model (model.num_classes > 0)\n",
    }
    for args, expected in errors.items():
        proc = run(*args)
        assert (proc.returncode, proc.stderr) == (2, expected), args
    bad_choice = run("--sampler", "nope")  # argparse's own errors are one line too
    assert bad_choice.returncode == 2 and bad_choice.stderr.count("\n") == 1
    assert bad_choice.stderr.startswith("error: argument --sampler: invalid choice: 'nope' (choose from ")
    assert bad_choice.stderr.endswith("; see jaxddpm sample --help\n")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["metadata", "truncated", "deleted"])
def test_a_damaged_checkpoint_is_one_warning_line(tiny_run, tmp_path, damage):
    """However the newest checkpoint is damaged (its metadata, its array data truncated or
    deleted), resuming prints exactly one line naming it and where it was moved."""
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run, workdir)
    state = workdir / "checkpoints" / "4" / "state"
    if damage == "metadata":
        (state / "_METADATA").write_text("{broken")
    for path in (state / "ocdbt.process_0" / "d").iterdir():
        if damage == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
        elif damage == "deleted":
            path.unlink()
    proc = subprocess.run([sys.executable, "-m", "jaxddpm", "train", "--workdir", str(workdir), *tiny_argv(train__num_steps=6)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    moved = next((workdir / "damaged_checkpoints").iterdir())
    assert proc.stderr == (f"warning: checkpoint at step 4 could not be restored "
                           f"({'JSONDecodeError' if damage == 'metadata' else 'Exception'}); moved to {moved}; trying an older one\n")
    assert "resumed from the checkpoint at step 2" in proc.stdout and "done: step 6" in proc.stdout


def test_sample_and_eval_default_to_the_train_workdir_and_fid_warns(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no runs/quickstart here
    assert cli.main(["sample"]) == 2
    assert capsys.readouterr().err == f"error: workdir {os.path.join('runs', 'quickstart')} does not exist\n"
    assert cli.main(["eval", "--metric", "fid", "--num-samples", "100"]) == 2
    assert capsys.readouterr().err == (
        "warning: FID from 100 samples is biased upwards and not comparable with published FIDs, which use 50,000 "
        "(--num-samples 50000)\n"
        f"error: workdir {os.path.join('runs', 'quickstart')} does not exist\n")
