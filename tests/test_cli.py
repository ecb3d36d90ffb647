from typer.testing import CliRunner

from analyses.cli import app

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "demo" in result.output and "report" in result.output


def test_report_rebuilds_from_results(micro_run):
    micro_run.report.unlink()
    result = runner.invoke(app, ["report", str(micro_run.root)])
    assert result.exit_code == 0 and micro_run.report.exists()


def test_report_refuses_a_directory_that_is_not_a_run(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "no manifest.json" in result.output


def test_demo_refuses_a_run_with_another_config_in_one_line(micro_run):
    result = runner.invoke(app, ["demo", "--out", str(micro_run.root), "--seed", "0"])
    assert result.exit_code == 2
    assert "another config" in result.output and "Traceback" not in result.output
