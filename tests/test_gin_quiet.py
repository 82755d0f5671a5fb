"""tf_codistill.gin_quiet: gin's include misses are dropped, everything else is kept."""

import logging
import os

import gin

from tf_codistill import gin_quiet


def record(pathname, msg, level=logging.ERROR):
    return logging.LogRecord("root", level, pathname, 1, msg, (), None)


def test_drops_only_gins_path_not_found():
    quiet = gin_quiet.QuietGinIncludes()
    reader = os.path.join("site-packages", "gin", "resource_reader.py")
    assert not quiet.filter(record(reader, "Path not found: mnist1d.gin"))
    assert quiet.filter(record(reader, "something else gin says"))
    assert quiet.filter(record("elsewhere.py", "Path not found: mnist1d.gin"))


def test_an_include_found_on_the_search_path_logs_no_error(tmp_path, caplog):
    (tmp_path / "base.gin").write_text("f.x = 1\n")
    top = tmp_path / "sub" / "top.gin"
    top.parent.mkdir()
    top.write_text("include 'base.gin'\n")

    @gin.configurable
    def f(x=0):
        return x

    gin.add_config_file_search_path(str(tmp_path))
    root = logging.getLogger()
    # gin_utils installs the filter when imported (other tests may have):
    # without any, the same parse logs the miss, so the test can fail.
    installed = [f for f in root.filters if isinstance(f, gin_quiet.QuietGinIncludes)]
    for f_ in installed:
        root.removeFilter(f_)
    try:
        for quiet, expect_miss in ((None, True), (gin_quiet.QuietGinIncludes(), False)):
            caplog.clear()
            if quiet:
                root.addFilter(quiet)
            try:
                with caplog.at_level(logging.INFO):
                    gin.parse_config_file(str(top))
                assert f() == 1
            finally:
                if quiet:
                    root.removeFilter(quiet)
                gin.clear_config()
            misses = [r for r in caplog.records if "Path not found" in r.getMessage()]
            assert bool(misses) == expect_miss, misses
    finally:
        for f_ in installed:
            root.addFilter(f_)
