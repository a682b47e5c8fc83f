from vitkd.cli import main, parse_command_line
from vitkd.pipeline import command


def test_pipeline_command_line():
    _, args = parse_command_line(["pipeline", "demo/pipelines/xtc_single_stage", "--fresh", "train.epochs=1"])
    assert args.handler is command.run and args.fresh and args.overrides == ["train.epochs=1"]
    assert args.output_dir is None


def test_missing_pipeline_file_is_a_user_error(tmp_path, capsys):
    bad = tmp_path / "p.yaml"
    bad.write_text("name: p\nstages: []\nrecipe: r.yaml\n")
    assert main(["pipeline", str(bad)]) == 2
    assert "stages is empty" in capsys.readouterr().err
