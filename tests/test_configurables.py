"""configurables: every gin registration in one module; a gin file needs only that."""

import ast
import glob
import os
import subprocess
import sys

import gin

from tf_codistill import configurables
from tf_codistill import testing
from tf_codistill.datasets import text
from tf_codistill.models import mlp

# Modules whose job is gin: the registrations, the root, parsing, reading a run's config.
GIN_MODULES = {
    "tf_codistill/configurables.py",
    "tf_codistill/train_lib.py",
    "tf_codistill/gin_utils.py",
    # Reads gin's parsed bindings to name a refused keyword's binding.
    "tf_codistill/gin_errors.py",
    "tf_codistill/evaluation/run_config.py",
}


def test_every_shipped_gin_file_parses_with_plain_gin_and_only_configurables():
    # A fresh process: nothing but `import tf_codistill.configurables` (which
    # each shipped root gin file does itself) registers what the files name.
    gin_dir = os.path.join(testing.repo_root(), "gin")
    files = sorted(glob.glob(os.path.join(gin_dir, "**", "*.gin"), recursive=True))
    # gin/reproduce/ configures the study harness, not a group (tests/test_reproduce.py).
    files = [f for f in files if os.sep + "reproduce" + os.sep not in f]
    assert len(files) >= 20
    code = (
        "import sys, gin\n"
        f"gin.add_config_file_search_path({gin_dir!r})\n"
        "for path in sys.argv[1:]:\n"
        "    gin.clear_config()\n"
        "    gin.parse_config_file(path)\n"
        "    assert gin.query_parameter('tf_codistill.train_lib.train_group.train_steps') > 0\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *files], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_library_modules_do_not_import_gin():
    root = testing.repo_root()
    importers = set()
    for path in glob.glob(os.path.join(root, "tf_codistill", "**", "*.py"), recursive=True):
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "gin" or n.startswith("gin.") for n in names):
                importers.add(os.path.relpath(path, root))
    assert importers == GIN_MODULES


def test_references_are_configured_direct_calls_are_not():
    gin.parse_config("tf_codistill.models.mlp_classifier.hidden_units = (3,)")
    configured = gin.get_configurable("tf_codistill.models.mlp_classifier")()
    assert configured.get_layer("hidden_0").units == 3
    # The library's own calls are plain Python, whatever config is active.
    assert mlp.mlp_classifier().get_layer("hidden_0").units == 256


def test_text_corpus_reads_its_bindings_when_called_directly():
    # lm_input_fn and friends build the configured corpus with TextCorpus().
    gin.parse_config("tf_codistill.datasets.text.TextCorpus.target_vocab_size = 300")
    assert text.TextCorpus(train_files="x.txt").target_vocab_size == 300


def test_every_listed_configurable_is_registered_under_its_module():
    names = [f"{m}.{c.__name__}" for m, cs in configurables.REGISTERED.items() for c in cs]
    names += [f"{m}.{n}" for m, (_, ns) in configurables.KERAS.items() for n in ns]
    names += ["tf_codistill.train_lib.train_group", "tf_codistill.datasets.text.TextCorpus"]
    for name in names:
        assert gin.get_configurable(name) is not None, name


def test_a_gin_file_picks_the_peer_selection_rule():
    from tf_codistill import gin_utils
    from tf_codistill import peer_selection

    gin.parse_config(
        "tf_codistill.train_lib.train_group.peer_selection = "
        "@tf_codistill.peer_selection.RandomPeer()\n"
        "tf_codistill.peer_selection.RandomPeer.seed = 3"
    )
    rule = gin_utils.query("tf_codistill.train_lib.train_group.peer_selection")
    assert isinstance(rule, peer_selection.RandomPeer) and rule.seed == 3
