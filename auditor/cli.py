"""The `auditor` command line (Click).

Exit codes (contract): 0 nothing at or above --fail-on, 1 something is, 2 usage,
configuration or loading error with one clear line on stderr and no traceback (--debug shows
it). Every error path below funnels into `_fail`.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from auditor._version import __version__
from auditor.errors import UsageFailure
from auditor.reporters import FORMATS

FAIL_ON = ("error", "warning", "info", "never")


def _fail(message: str, debug: bool = False) -> None:
    if debug:
        import traceback

        traceback.print_exc(file=sys.stderr)
    click.echo(f"auditor: error: {message}", err=True)
    sys.exit(2)


def shared_options(func: Callable) -> Callable:
    """Options every command that produces findings accepts (contract)."""
    options = [
        click.option("--format", "fmt", type=click.Choice(FORMATS), default=None, help="Output format (default text)."),
        click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="Write the report to FILE."),
        click.option("--select", default=None, help="Only these codes or prefixes, comma separated."),
        click.option("--ignore", default=None, help="Skip these codes or prefixes, comma separated."),
        click.option("--fail-on", type=click.Choice(FAIL_ON), default=None, help="Lowest severity that makes the exit code 1 (default warning)."),
        click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="Read configuration from FILE."),
        click.option("--quiet", "-q", is_flag=True, default=False, help="Findings only: no fixes, no summary."),
        click.option("--debug", is_flag=True, default=False, help="Show the traceback behind an exit 2."),
        click.version_option(__version__, "--version", prog_name="auditor", message="%(prog)s %(version)s"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="auditor", message="%(prog)s %(version)s")
def main() -> None:
    """Lint transfer-learning code and models: preprocessing, frozen BatchNorm, inference
    mutation, heads and fine-tuning learning rates."""


def _guard(func: Callable) -> Callable:
    """Turn our own errors into exit 2 with one line; anything unexpected too (with --debug
    showing the traceback), because a linter in CI must never print a stack to users."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug", False)
        try:
            return func(*args, **kwargs)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("auditor: interrupted", err=True)
            sys.exit(2)
        except UsageFailure as exc:
            _fail(str(exc), debug)
        except Exception as exc:  # noqa: BLE001
            from auditor.config import ConfigError
            from auditor.discover import DiscoveryError
            from auditor.registry import SelectionError

            if isinstance(exc, (ConfigError, DiscoveryError, SelectionError)):
                _fail(str(exc), debug)
            _fail(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", debug)

    return wrapper


def _settings(config_path: str | None, select: str | None, ignore: str | None, fail_on: str | None, fmt: str | None):
    from auditor.config import ConfigError, load_config
    from auditor.registry import Selection, split_codes

    config = load_config(config_path)
    sel = split_codes(select) if select is not None else config.get("select", [])
    ign = split_codes(ignore) if ignore is not None else config.get("ignore", [])
    ign = list(ign) + list(config.get("extend-ignore", []))
    selection = Selection(sel, ign, config.get("extend-select", []))
    fail = fail_on or config.get("fail-on", "warning")
    if fail not in FAIL_ON:
        raise ConfigError(f"fail-on must be one of {', '.join(FAIL_ON)}, got {fail!r}")
    fmt = fmt or config.get("format", "text")
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return config, selection, fail, fmt


def _emit(report, fmt: str, output: str | None, quiet: bool) -> None:
    from auditor.reporters import reporter_class

    reporter = reporter_class(fmt)()
    if output:
        try:
            with open(output, "w", encoding="utf-8") as fh:
                reporter.render(report, fh, color=False, quiet=quiet)
        except OSError as exc:
            raise UsageFailure(f"cannot write {output}: {exc.strerror or exc}") from None
        return
    color = fmt == "text" and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    reporter.render(report, sys.stdout, color=color, quiet=quiet)
    sys.stdout.flush()


@main.command()
@click.argument("paths", nargs=-1, required=True)
@shared_options
@click.option("--jobs", "-j", type=click.IntRange(min=0), default=None, help="Parallel processes (default: all cores; 1 = serial).")
@click.option("--no-cache", is_flag=True, default=False, help="Do not read or write the result cache.")
@click.option("--baseline", type=click.Path(dir_okay=False), default=None, help="Report only findings not in this baseline file.")
@click.option("--write-baseline", type=click.Path(dir_okay=False), default=None, help="Write the current findings to a baseline file.")
@click.option("--stdin-filename", default=None, help="Name to report for source read from '-' (standard input).")
@_guard
def check(paths, fmt, output, select, ignore, fail_on, config_path, quiet, debug, jobs, no_cache, baseline, write_baseline, stdin_filename):
    """Static checks of Python sources: files, folders (recursively) and notebooks.

    Nothing is imported from torch, tensorflow or keras: this is fast enough for a
    pre-commit hook. Pass - to read source from standard input.
    """
    from auditor.analysis.source import SourceError, source_from_bytes
    from auditor.discover import discover
    from auditor.engine import check_paths, check_unit, default_cache_dir
    from auditor.report import Report

    config, selection, fail, fmt = _settings(config_path, select, ignore, fail_on, fmt)
    quiet = quiet or bool(config.get("quiet", False))
    output = output or config.get("output")
    codes = [r.code for r in selection.rules(kind="static")]
    results = []
    file_paths = [p for p in paths if p != "-"]
    if "-" in paths:
        name = stdin_filename or "-"
        try:
            unit = source_from_bytes(sys.stdin.buffer.read(), name)
        except SourceError as exc:
            raise UsageFailure(f"{name}: {exc}") from None
        results.append(check_unit(unit, codes, debug))
    files = discover(file_paths, config.get("exclude", []) + config.get("extend-exclude", []))
    use_cache = not no_cache and config.get("cache", True)
    jobs = jobs if jobs is not None else config.get("jobs")
    results.extend(
        check_paths([(str(f), _display(f)) for f in files], codes, jobs=jobs, debug=debug, cache_dir=default_cache_dir() if use_cache else None)
    )
    if debug:
        for result in results:
            for note in result.debug:
                click.echo(note, err=True)
    findings, fingerprints = [], []
    for result in results:
        for finding, fp in zip(result.findings, result.fingerprints or [None] * len(result.findings)):
            if _per_file_ignored(finding, config):
                continue
            findings.append(finding)
            fingerprints.append(fp)
    if write_baseline or baseline:
        from auditor import baseline as baseline_mod

        if write_baseline:
            baseline_mod.write(write_baseline, findings, fingerprints)
        if baseline:
            findings = baseline_mod.filter_new(baseline, findings, fingerprints)
    report = Report(findings=findings, files_checked=len(results))
    _emit(report, fmt, output, quiet)
    sys.exit(report.exit_code(fail))


def _display(path: Path) -> str:
    """Paths as the user gave them, relative where possible (stable across machines)."""
    text = str(path)
    return text[2:] if text.startswith("./") else text


def _per_file_ignored(finding, config) -> bool:
    import fnmatch

    if not config.per_file_ignores or not finding.path:
        return False
    path = finding.path.replace(os.sep, "/")
    try:
        rel = Path(finding.path).resolve().relative_to(config.root.resolve()).as_posix()
    except ValueError:
        rel = path
    for glob, codes in config.per_file_ignores:
        if fnmatch.fnmatch(rel, glob) or fnmatch.fnmatch(path, glob) or fnmatch.fnmatch(Path(path).name, glob):
            if any(finding.rule.startswith(c.upper()) for c in codes):
                return True
    return False


@main.command()
@click.argument("target")
@shared_options
@click.option("--num-classes", type=click.IntRange(min=1), default=None, help="Number of classes the head must produce.")
@click.option("--pretrained", default=None, help="Family the weights came from, e.g. torchvision.models.resnet50, timm/inception_v3, keras.applications.resnet50.")
@click.option("--sample", type=click.Path(dir_okay=False), default=None, help="Raw input batch (.npy, or .npz with x/y arrays); default: a deterministic synthetic batch.")
@click.option("--framework", type=click.Choice(("auto", "torch", "keras")), default=None, help="Framework of the target (default auto).")
@click.option("--trust", is_flag=True, default=False, help="Allow loading that can run code: full pickles, TorchScript, torch.export archives, Keras files with Lambda layers or other code.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, help="Stop (exit 2) after SECONDS; the model is restored.")
@_guard
def audit(target, fmt, output, select, ignore, fail_on, config_path, quiet, debug, num_classes, pretrained, sample, framework, trust, timeout):
    """Dynamic checks: load a model or pipeline and measure it.

    TARGET is path/to/file.py:NAME or package.module:NAME (a Pipeline, a torch.nn.Module or
    keras.Model, or a zero-argument function returning one), or a model file (.pt/.pth state
    dict; TorchScript and .pt2 with --trust; .keras and .h5, with --trust when they hold
    code such as a Lambda layer). Everything the probes touch is restored afterwards.
    """
    from auditor.dynamic.audit import make_context, run_probes
    from auditor.dynamic.loading import resolve

    # TensorFlow's C++ log chatter would bury the report on stderr; the user's setting wins
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    config, selection, fail, fmt = _settings(config_path, select, ignore, fail_on, fmt)
    quiet = quiet or bool(config.get("quiet", False))
    output = output or config.get("output")
    num_classes = num_classes if num_classes is not None else _config_int(config, "num-classes")
    pretrained = pretrained or config.get("pretrained")
    sample = sample or config.get("sample")
    framework = framework or config.get("framework", "auto")
    if framework not in ("auto", "torch", "keras"):
        raise UsageFailure(f"framework must be auto, torch or keras, got {framework!r}")
    timeout = timeout if timeout is not None else config.get("timeout")
    from auditor.dynamic.keras_files import quiet_native_stderr

    with quiet_native_stderr():  # TensorFlow's C++ start-up lines, when the target imports it
        loaded = resolve(target, trust=trust, framework=framework)
    overrides = {}
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if pretrained:
        overrides["pretrained"] = pretrained
    if sample:
        from auditor.dynamic.samples import load_sample

        x, y = load_sample(sample)
        overrides["sample"] = x
        if y is not None:
            overrides["labels"] = y
    if loaded.pipeline is not None:
        context = make_context(loaded.pipeline.replace(**overrides), loaded.source)
        context.notes[:0] = list(getattr(loaded, "notes", []) or [])
    else:
        context = loaded.context
        for key in ("num_classes", "pretrained"):
            if key in overrides:
                setattr(context, key, overrides[key])
    show_progress = fmt != "json" and not quiet and sys.stderr.isatty()
    progress = (lambda line: click.echo(line, err=True)) if show_progress else None
    report = run_probes(context, selection.rules(kind="dynamic"), timeout=timeout, progress=progress, debug=debug)
    report.audited = target
    _emit(report, fmt, output, quiet)
    sys.exit(report.exit_code(fail))


def _config_int(config, key: str):
    value = config.get(key)
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        from auditor.config import ConfigError

        raise ConfigError(f"{key} must be an integer, got {value!r}") from None
    return number


@main.command("rules")
@click.option("--format", "fmt", type=click.Choice(("text", "json")), default="text", help="Output format.")
@click.option("--all", "show_all", is_flag=True, default=False, help="Include rules that are off by default.")
def rules_command(fmt: str, show_all: bool) -> None:
    """List every rule: code, name, category, default severity, kind and summary."""
    import json
    import textwrap

    from auditor.registry import all_rules

    rules = [r for r in all_rules() if show_all or r.enabled_by_default]
    if fmt == "json":
        rows = [
            {
                "code": r.code,
                "name": r.name,
                "category": r.category,
                "severity": r.severity.value,
                "kind": r.kind,
                "enabled_by_default": r.enabled_by_default,
                "summary": r.summary(),
            }
            for r in rules
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r.name) for r in rules)
    cat_width = max(len(r.category) for r in rules)
    for r in rules:
        summary = textwrap.shorten(r.summary(), 100, placeholder="...")
        click.echo(f"{r.code}  {r.name.ljust(width)}  {r.category.ljust(cat_width)}  {r.severity.value:<7}  {r.kind:<7}  {summary}")


@main.command()
@click.argument("code")
def explain(code: str) -> None:
    """Print a rule's full documentation (what it does, why it is bad, example, fix)."""
    from auditor.registry import rule_by_code

    rule = rule_by_code(code)
    if rule is None:
        _fail(f"unknown rule {code!r} (see `auditor rules`)")
        return
    header = f"{rule.code} {rule.name} ({rule.category}, {rule.severity.value}, {rule.kind})"
    click.echo(header)
    click.echo("=" * len(header))
    click.echo()
    click.echo(rule.documentation())
    click.echo()
    click.echo(f"Message: {rule.message}")
    click.echo(f"Fix:     {rule.fix}")
