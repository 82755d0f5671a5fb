"""The programs as a user runs them: installed console scripts, `binaries/*.py`.

The console scripts are tested after a real `pip install -e .` and a real
`pip install .` of this checkout, each into a fresh virtualenv that sees the
environment's packages (TensorFlow...) but installs tf_codistill itself
(`--no-deps --no-build-isolation`: nothing is downfound). The scripts then
run from another directory, as a user's would.
"""

import os
import subprocess
import sys
import venv

import pytest

from tf_codistill import testing

ROOT = testing.repo_root()
SCRIPTS = {
    "tf-codistill-train": "train",
    "tf-codistill-launch-local": "launch_local",
    "tf-codistill-evaluate": "evaluate",
    "tf-codistill-churn": "churn",
}
# Per program: its docstring's first words, and flags of its own with words
# of their descriptions.
EXPECTED = {
    "train": (
        "Trains one codistillation group",
        {"--root_dir": "shared by all its groups", "--allow_no_distillation": "never distilled"},
    ),
    "launch_local": (
        "Runs a whole codistillation job on this machine",
        {"--num_groups": "Codistilling groups", "--workers_per_group": "Worker processes"},
    ),
    "evaluate": (
        "Evaluates a run's published checkpoints",
        {"--mode": "every kept checkpoint", "--ensemble": "ensemble"},
    ),
    "churn": ("Prediction churn between two or more", {"--model": "ROOT_DIR:GROUP"}),
}
# Finds the module of every tf-codistill-* entry point of the install (what
# each console script imports; importing two programs in one process would
# define their common flags twice) and prints where the package came from.
FIND_ALL = (
    "from importlib import metadata, util\n"
    "import tf_codistill\n"
    "eps = [e for e in metadata.entry_points(group='console_scripts')"
    " if e.name.startswith('tf-codistill-')]\n"
    "missing = [e.module for e in eps if util.find_spec(e.module) is None]\n"
    "assert not missing, missing\n"
    "print(sorted(e.name for e in eps))\n"
    "print(tf_codistill.__file__)\n"
)


def _install(tmp_path, editable):
    env_dir = str(tmp_path / "venv")
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = os.path.join(env_dir, "bin", "python")
    target = ["-e", ROOT] if editable else [ROOT]
    # The environment's pip, installing into the virtualenv's interpreter.
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps"]
        + ["--no-build-isolation", *target],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return env_dir


def _user_env():
    # As a user's shell: no PYTHONPATH pointing into the checkout.
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def _run(argv, cwd):
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=600, cwd=cwd, env=_user_env()
    )


def _check_help(result, program):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    first_words, flags = EXPECTED[program]
    assert first_words in result.stdout, result.stdout[:2000]
    assert "\nflags:\n" in result.stdout, result.stdout[:3000]
    listed = " ".join(result.stdout.split("\nflags:\n", 1)[1].split())  # Unwrapped.
    for flag, words in flags.items():
        # `--name: description`, or `--[no]name: ...` for a boolean.
        found = [p for p in (f"{flag}: ", f"--[no]{flag[2:]}: ") if p in listed]
        assert found, (flag, result.stdout[:3000])
        assert words in listed.split(found[0], 1)[1][:300], (flag, result.stdout[:3000])


@pytest.mark.slow
@pytest.mark.parametrize(
    "editable, helped",
    [
        # Each install runs two scripts' --help (each start imports
        # TensorFlow); between them, all four.
        (True, ["tf-codistill-train", "tf-codistill-launch-local"]),
        (False, ["tf-codistill-evaluate", "tf-codistill-churn"]),
    ],
    ids=["pip_install_-e", "pip_install"],
)
def test_installed_console_scripts_run_and_list_their_flags(tmp_path, editable, helped):
    env_dir = _install(tmp_path, editable)
    elsewhere = str(tmp_path)
    found = _run([os.path.join(env_dir, "bin", "python"), "-c", FIND_ALL], elsewhere)
    # Before the fix: ModuleNotFoundError: tf_codistill_binaries (pip install -e .).
    assert found.returncode == 0, found.stderr[-3000:]
    names, package = found.stdout.split("\n")[:2]
    assert names == str(sorted(SCRIPTS)), names
    if editable:
        assert package == os.path.join(ROOT, "tf_codistill", "__init__.py")
    else:
        assert package.startswith(env_dir), package
    for script in helped:
        result = _run([os.path.join(env_dir, "bin", script), "--help"], elsewhere)
        # Before the fix: `USAGE: <script> [flags]` only, and exit code 1.
        _check_help(result, SCRIPTS[script])
        assert f"USAGE: {script} [flags]" not in result.stdout
    if not editable:
        # A mistake is one line through the installed script too.
        result = _run(
            [os.path.join(env_dir, "bin", "tf-codistill-train"), f"--root_dir={elsewhere}/r"],
            elsewhere,
        )
        assert result.returncode == 1, result.stderr[-2000:]
        assert result.stderr.strip().splitlines()[-1] == (
            "train.py: give at least one --gin_file (e.g. demo/codistill.gin)"
        )


@pytest.mark.slow
def test_checkout_shim_shows_the_programs_help():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "binaries", "train.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    _check_help(result, "train")
