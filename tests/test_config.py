import ast
import dataclasses
import importlib
import subprocess
import sys

import pytest

from configurator import UsageError, describe, help_text
from conftest import HUNG_S, REPO
from sample import SampleConfig
from train import TrainConfig, load_config


def write(tmp_path, text, name="exp.py") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def problems_of(argv) -> list[str]:
    with pytest.raises(UsageError) as exc:
        load_config(argv)
    return exc.value.problems


def test_defaults_then_file_then_command_line(tmp_path):
    path = write(tmp_path, "n_layer = 3\nbatch_size = 7\n")
    cfg = load_config([path, "--batch_size=5"])
    assert (cfg.n_layer, cfg.batch_size, cfg.n_embd) == (3, 5, TrainConfig().n_embd)


def test_config_can_import_baseline_and_change_one_line(tmp_path):
    path = write(tmp_path, "from config.baseline import *\nimport math\nn_layer = 2\n_helper = 1\n")
    cfg = load_config([path])
    assert cfg.out_dir == "out/baseline" and cfg.n_layer == 2 and cfg.n_embd == 384


def test_unknown_key_in_file_suggests_the_right_one(tmp_path):
    path = write(tmp_path, "n_layers = 3\n")
    assert problems_of([path]) == [f"unknown key 'n_layers' in {path} (did you mean 'n_layer'?)"]


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, "learning_rat = 0.1\n")
    problems = problems_of([path, "--n_head=abc", "--batch_sise=3"])
    assert problems == [
        f"unknown key 'learning_rat' in {path} (did you mean 'learning_rate'?)",
        "'n_head' on the command line must be int, got 'abc'",
        "unknown key 'batch_sise' on the command line (did you mean 'batch_size'?)",
    ]


@pytest.mark.parametrize("arg, key, value", [
    ("--max_iters=5e3", "max_iters", 5000),
    ("--learning_rate=3e-4", "learning_rate", 3e-4),
    ("--bias=true", "bias", True),
    ("--bias=False", "bias", False),
    ("--compile=false", "compile", False),
    ("--compile=auto", "compile", "auto"),
    ("--compile", "compile", True),
    ("--dtype=bfloat16", "dtype", "bfloat16"),
    ("--init_from=resume", "init_from", "resume"),
    ("--out_dir=out/a=b", "out_dir", "out/a=b"),  # split on the first '=' only
])
def test_values_are_converted_by_field_type(arg, key, value):
    assert getattr(load_config([arg]), key) == value


@pytest.mark.parametrize("arg, message", [
    ("--max_iters=2.5", "'max_iters' on the command line must be int, got '2.5'"),
    ("--bias=maybe", "'bias' on the command line must be bool, got 'maybe'"),
    ("--dtype=float64", "'dtype' on the command line must be 'auto' or 'float32' or 'bfloat16' or 'float16'"),
    ("--dropout=1.0", "'dropout' must be in [0, 1), got 1.0"),
    ("--n_layer=0", "'n_layer' must be a positive integer, got 0"),
    ("--learning_rate=0", "'learning_rate' must be > 0, got 0.0"),
    ("--n_head=5", "'n_embd' (384) must be divisible by 'n_head' (5)"),
    ("--device=gpu", "'device' must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    ("--label_smoothing=1", "'label_smoothing' must be in [0, 1), got 1.0"),
    ("--lr_schedule=step", "'lr_schedule' on the command line must be 'cosine' or 'linear' or 'constant' or 'wsd'"),
    ("--wsd_decay_fraction=0", "'wsd_decay_fraction' must be in (0, 1], got 0.0"),
    ("--norm=batchnorm", "'norm' on the command line must be 'layernorm' or 'rmsnorm', got 'batchnorm'"),
    ("--position_encoding=rope --n_embd=30 --n_head=2",
     "position_encoding 'rope' turns pairs of dimensions, so each head needs an even size: n_embd / n_head is 15"),
])
def test_bad_values_are_refused_naming_the_key(arg, message):
    assert any(p.startswith(message) for p in problems_of(arg.split())), problems_of(arg.split())


def test_wrong_type_in_file_is_refused(tmp_path):
    path = write(tmp_path, "n_layer = '4'\ndropout = 0.1\nmax_iters = 2e3\n")
    assert problems_of([path]) == [f"'n_layer' in {path} must be int, got '4'"]


def test_missing_and_broken_config_files(tmp_path):
    assert "not found" in problems_of([str(tmp_path / "nope.py")])[0]
    assert "does not parse" in problems_of([write(tmp_path, "n_layer = = 3\n")])[0]


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("*.py")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path):
    cfg = load_config([str(path)])
    if path.name != "__init__.py":
        assert cfg.out_dir.startswith("out/") and cfg.out_dir != TrainConfig().out_dir


def config_imports(path) -> list[str]:
    """The names of the configs that a config file imports, however it spells the import."""
    modules = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "config":
            modules += [f"config.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.append(node.module)
    return [module.removeprefix("config.") for module in modules if module.startswith("config.")]


def test_a_config_builds_on_at_most_one_that_stands_alone():
    """Every recipe reads in one file, or two: a config imports at most one other config, and that one imports none."""
    imports = {path.stem: config_imports(path) for path in (REPO / "config").glob("*.py") if path.stem != "__init__"}
    assert "cpu" in imports and "baseline" in imports
    unknown = {name: bases for name, bases in imports.items() if not set(bases) <= set(imports)}
    several = {name: bases for name, bases in imports.items() if len(bases) > 1}
    too_deep = {name: (bases[0], imports[bases[0]]) for name, bases in imports.items()
                if len(bases) == 1 and imports.get(bases[0])}
    assert not unknown, f"configs that import a missing config: {unknown}"
    assert not several, f"configs that import more than one config: {several}"
    assert not too_deep, f"configs that build on a config which itself builds on another: {too_deep}"


def test_cli_mistake_is_one_line_without_traceback():
    result = subprocess.run([sys.executable, "train.py", "config/baseline.py", "--n_layers=3"], cwd=REPO,
                            capture_output=True, text=True, timeout=HUNG_S)
    assert result.returncode == 2
    assert result.stderr == "error: unknown key 'n_layers' on the command line (did you mean 'n_layer'?)\n"


@pytest.mark.parametrize("cls", [TrainConfig, SampleConfig], ids=lambda cls: cls.__name__)
def test_readme_tables_say_what_help_says(cls):
    """README.md's table of each script's settings holds, for every key, the default and meaning --help prints."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [row for row in (f"| `{name}` | {f'`{default}`' if default else '(empty)'} | {meaning} |"
                               for name, default, meaning in describe(cls)) if row not in readme]
    assert not missing, f"README.md lacks these rows (or has them otherwise): {missing}"
    assert all(f"--{name}={default}" in help_text(cls) for name, default, _ in describe(cls))


SCRIPTS = sorted(path.stem for path in REPO.glob("*.py") if "\ndef main(" in path.read_text(encoding="utf-8"))


def test_the_scripts_are_found():
    assert {"train", "sample", "prepare_shakespeare", "plot", "compare", "tune", "bench", "export"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_scripts_help_fits_a_120_column_terminal(script, capsys):
    assert importlib.import_module(script).main(["--help"]) is None
    lines = capsys.readouterr().out.splitlines()
    too_wide = [f"{len(line)}: {line}" for line in lines if len(line) > 120]
    assert any(line.strip() for line in lines), "--help printed nothing"
    assert not too_wide, "lines of --help wider than 120 columns:\n" + "\n".join(too_wide)


@dataclasses.dataclass
class LongOptions:
    url: str = "https://example.com/" + "a" * 60  # where to download it from
    n: int = 1  # a meaning too long for one line: it goes on about this small setting, past the terminal's edge


def test_help_puts_a_long_default_on_its_own_line_and_wraps_long_meanings():
    lines = help_text(LongOptions, columns=80).splitlines()
    assert lines[0] == f"  --url={LongOptions.url}"
    assert lines[1] == " " * 9 + "where to download it from"
    assert lines[2].startswith("  --n=1  a meaning too long") and lines[3] == " " * 9 + "past the terminal's edge"
    assert len(lines) == 4 and all(len(line) <= 80 for line in lines[1:])


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_the_same_help(script, capsys):
    """One command-line convention: --help prints the script's docstring and each option as --key=default."""
    module = importlib.import_module(script)
    assert module.main(["--help"]) is None
    out = capsys.readouterr().out
    assert out.startswith(module.__doc__) and "Options (defaults shown):" in out
    options_cls = next(v for k, v in vars(module).items()
                       if dataclasses.is_dataclass(v) and k.endswith(("Config", "Options")) and v.__module__ == script)
    assert all(f"--{name}={default}" in out for name, default, _ in describe(options_cls))


def test_positional_arguments_are_refused_where_a_script_takes_none(capsys):
    import prepare_shakespeare
    with pytest.raises(SystemExit):
        prepare_shakespeare.main(["my_text.txt"])
    assert "unexpected argument 'my_text.txt': options look like --key=value" in capsys.readouterr().err
