"""tools/check_imports.py: vitkd's packages import downward only, and the check does find a cycle when one exists."""

import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "check_imports.py"
spec = importlib.util.spec_from_file_location("check_imports", TOOL)
check_imports = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_imports)


def test_vitkd_has_no_import_cycle_between_packages(capsys):
    assert check_imports.main([]) == 0
    assert "no import cycles between packages" in capsys.readouterr().out
    graph = check_imports.import_graph()
    assert graph["config"] <= {"errors"}  # the schema sits at the bottom
    assert not graph.get("engine", set()) & {"tasks", "cache", "losses", "data", "bench"}  # the engine is task-agnostic


def test_a_cycle_through_a_lazy_import_is_reported(tmp_path, capsys):
    package = tmp_path / "pkg"
    (package / "low").mkdir(parents=True)
    (package / "high").mkdir()
    (package / "low" / "a.py").write_text("def f():\n    from pkg.high.b import g  # lazy, still a dependency\n")
    (package / "high" / "b.py").write_text("from pkg.low.a import f\n")
    (package / "config.py").write_text("import pkg.low.a\n")
    (package / "cli.py").write_text("import pkg.high.b\nimport pkg.config\n")
    assert check_imports.find_cycles(check_imports.import_graph(package)) == [["high", "low", "high"]]
    assert check_imports.main(["--root", str(package)]) == 1
    assert "cycle: high -> low -> high" in capsys.readouterr().out
