"""handlers/tasks.py is the one registry of tasks: every list of them (the CLI's choices and help, scaffolds,
stand-ins, the archive builder, tskit optimize's guards) is derived from it, so a new entry appears everywhere."""
import argparse

from export.optimize.guard import GUARDS
from handlers.tasks import BASE, TASKS, Scaffold, Task, scaffold_bases, stand_in_tasks


def subcommand(parser: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    for name in names:
        [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = action.choices[name]
    return parser


def option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)


def test_a_new_task_appears_everywhere(monkeypatch):
    from tskit.cli import parser
    from tskit.scaffold import config_text

    audio = Task("audio_tagger", "audio_tagger", "AudioTagger", "a sound",
                 Scaffold({"topk": 3}, 'b"not a sound"', 415, "dict"), stand_in=True, guard="classifier")
    monkeypatch.setitem(TASKS, audio.name, audio)
    cli = parser()
    assert "audio_tagger" in option(subcommand(cli, "build"), "--handler").help
    assert "audio_tagger" in option(subcommand(cli, "new", "handler"), "--from").choices
    assert "audio_tagger" in scaffold_bases() and "audio_tagger" in stand_in_tasks()
    assert "topk: 3" in config_text("audio_tagger")
    assert audio.guard in GUARDS


def test_every_task_names_a_module_with_its_class_and_a_known_guard():
    import importlib

    for task in (*TASKS.values(), BASE):
        module = importlib.import_module(f"handlers.{task.module}")
        assert hasattr(module, task.class_name), task
        assert task.guard is None or task.guard in GUARDS, task
    assert list(scaffold_bases())[-1] == "base" and "image_segmenter" not in scaffold_bases()


def test_the_cli_takes_its_formats_from_the_exporter():
    from export.formats import FORMATS
    from tskit.cli import parser

    cli = parser()
    assert list(option(subcommand(cli, "export"), "--format").choices) == list(FORMATS)
    assert list(option(subcommand(cli, "build-default"), "--format").choices) == list(FORMATS)
