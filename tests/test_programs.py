"""The programs as a user runs them: installed console scripts, `binaries/*.py`.

The console scripts are tested after a real `pip install -e .` and a real
`pip install .` of this checkout, each into a fresh virtualenv that sees the
environment's packages (TensorFlow...) but installs tf_codistill itself
(`--no-deps --no-build-isolation`: nothing is downfound). The scripts then
run from another directory, as a user's would.
"""

import os
import shutil
import site
import subprocess
import sys
import venv

import pytest

from tf_codistill import testing

ROOT = testing.repo_root()
SCRIPTS = {
    "tf-codistill-train": "train",
    "tf-codistill-launch-local": "launch_local",
    "tf-codistill-launch-ray": "launch_ray",
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
    "launch_ray": (
        "Runs a whole codistillation job on a Ray cluster",
        {"--address": "existing Ray cluster", "--max_failures": "Restarts of a group"},
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
    venv.create(env_dir, with_pip=False)
    python = os.path.join(env_dir, "bin", "python")
    # The packages of the environment running the tests (TensorFlow, ...),
    # after the virtualenv's own: a .pth line adds a directory to sys.path
    # without processing its own .pth files (an editable tf_codistill of
    # this environment stays out). system_site_packages would give the base
    # interpreter's, which in CI's virtualenv hold no TensorFlow.
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    with open(os.path.join(env_dir, "lib", version, "site-packages", "outer.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    if editable:
        target = ["-e", ROOT]
    else:
        # A regular install builds in the source tree (build/, *.egg-info):
        # from a copy, so that the checkout's stale build/ is neither used
        # nor left behind.
        source = str(tmp_path / "source")
        shutil.copytree(
            ROOT,
            source,
            ignore=shutil.ignore_patterns(
                "build", "dist", "*.egg-info", "__pycache__", ".*", "bazel-*", "docs"
            ),
        )
        target = [source]
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


@pytest.fixture(scope="module")
def editable_install(tmp_path_factory):
    """A virtualenv with `pip install -e <checkout>` (the README's command)."""
    return _install(tmp_path_factory.mktemp("editable"), editable=True)


@pytest.fixture(scope="module")
def regular_install(tmp_path_factory):
    """A virtualenv with `pip install <checkout>`."""
    return _install(tmp_path_factory.mktemp("regular"), editable=False)


def _check_install(env_dir, elsewhere, editable):
    found = _run([os.path.join(env_dir, "bin", "python"), "-c", FIND_ALL], elsewhere)
    # Before the fix: ModuleNotFoundError: tf_codistill_binaries (pip install -e .).
    assert found.returncode == 0, found.stderr[-3000:]
    names, package = found.stdout.split("\n")[:2]
    assert names == str(sorted(SCRIPTS)), names
    if editable:
        assert package == os.path.join(ROOT, "tf_codistill", "__init__.py")
    else:
        assert package.startswith(env_dir), package


def _check_scripts_help(env_dir, elsewhere, scripts):
    for script in scripts:
        result = _run([os.path.join(env_dir, "bin", script), "--help"], elsewhere)
        # Before the fix: `USAGE: <script> [flags]` only, and exit code 1.
        _check_help(result, SCRIPTS[script])
        assert f"USAGE: {script} [flags]" not in result.stdout


# Each start imports TensorFlow: each install runs two scripts' --help,
# between them all four.
@pytest.mark.slow
def test_editable_install_gives_working_console_scripts(editable_install, tmp_path):
    _check_install(editable_install, str(tmp_path), editable=True)
    _check_scripts_help(
        editable_install, str(tmp_path), ["tf-codistill-train", "tf-codistill-launch-local"]
    )


@pytest.mark.slow
def test_regular_install_gives_working_console_scripts(regular_install, tmp_path):
    elsewhere = str(tmp_path)
    _check_install(regular_install, elsewhere, editable=False)
    _check_scripts_help(regular_install, elsewhere, ["tf-codistill-evaluate", "tf-codistill-churn"])
    # A mistake is one line through the installed script too.
    result = _run(
        [os.path.join(regular_install, "bin", "tf-codistill-train"), f"--root_dir={elsewhere}/r"],
        elsewhere,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "train.py: give at least one --gin_file (e.g. demo/codistill.gin)"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "gin_file, extra",
    [
        ("lm/tiny.gin", []),
        # Its own TFDS directory: generated here from the shipped lines.
        ("criteo/tiny.gin", ["tf_codistill.datasets.criteo_input_fn.data_dir = '{tmp}/tfds'"]),
    ],
)
def test_tiny_configs_train_after_a_regular_install(regular_install, tmp_path, gin_file, extra):
    # They read testdata/: shipped with the package, found from any directory.
    elsewhere = str(tmp_path)
    bindings = ["tf_codistill.train_lib.train_group.train_steps = 10"]
    bindings += [b.format(tmp=elsewhere) for b in extra]
    result = _run(
        [
            os.path.join(regular_install, "bin", "tf-codistill-train"),
            f"--gin_file={gin_file}",
            f"--root_dir={elsewhere}/run",
            "--num_groups=1",
            *[f"--gin_bindings={b}" for b in bindings],
        ],
        elsewhere,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(os.path.join(elsewhere, "run", "group_0", "metrics.json"))


@pytest.mark.slow
def test_checkout_shim_shows_the_programs_help():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "binaries", "train.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    _check_help(result, "train")
