"""The README and docs/*.md say only what the code accepts: every command they show that runs an entry point
(`python w2s.py`, `python train.py`, `python eval.py`, `python bench.py`, `python -m run.prompting`, `python -m
benchmarks.probe`, `python -m scoring.toxicity`, also behind `torchrun ...` or environment variables, across backslash
line continuations, in fenced blocks and in inline `code`) uses only flags that script's argparse parser accepts; a
`python -c "..."` command imports only modules that exist, takes only attributes they have and, where it calls
`w2s.main` or `train.main`, passes only their flags; a table column headed "<script> flags" names only that script's
flags; a flag named anywhere else (in prose: `--recompute-bottom`) is some entry point's; and every relative markdown
link points at a file that exists. A failure names the page, the line and the flag.

The parsers are taken in-process: each entry point is called with argparse's parse methods replaced by one that hands
back the parser it was called on, fully built, before anything is parsed or run."""
import argparse
import importlib
import re
import runpy
import warnings
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["w2s.py", "train.py", "eval.py", "bench.py", "run.prompting", "benchmarks.probe", "scoring.toxicity"]
SCRIPT = r"w2s\.py|train\.py|eval\.py|bench\.py"
MODULE = r"run\.prompting|benchmarks\.probe|scoring\.toxicity"
# an entry point: `python SCRIPT`, `python -m MODULE`, `torchrun [its flags] SCRIPT`, or a code span / command that
# starts with a bare `SCRIPT --flag` ("`w2s.py --select R`")
ENTRY = re.compile(rf"(?<![\w./-])(?:python3?\s+(?:(?P<script>{SCRIPT})|-m\s+(?P<module>{MODULE}))"
                   rf"|torchrun\s(?:[^\s`]+\s+)*?(?P<torchrun>{SCRIPT}))(?=\s|$)")
BARE = re.compile(rf"^\s*(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?P<script>{SCRIPT})\s+(?=-)")
PYTHON_C = re.compile(r"""(?<![\w./-])python3?\s+-c\s+(?P<q>["'])(?P<code>.*?)(?P=q)""", re.S)
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
SEPARATOR = re.compile(r"&&|\|\||;(?=\s)")
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
SPAN = re.compile(r"`([^`]+)`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)\)")


class _Parser(Exception):
    def __init__(self, parser):
        self.parser = parser


def _capture(call):
    def hand_back(self, *args, **kwargs):
        raise _Parser(self)
    with mock.patch.object(argparse.ArgumentParser, "parse_known_args", hand_back), \
            mock.patch.object(argparse.ArgumentParser, "parse_args", hand_back), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module was imported before, as w2s imports it
        try:
            call()
        except _Parser as got:
            return got.parser
    raise AssertionError(f"{call} built no argparse parser")


def _entry(name):
    if name == "eval.py":  # eval.py is a thin entry point to experiment/evaluation.py's main
        return lambda: importlib.import_module("experiment.evaluation").main(["runs/x"])
    if name == "benchmarks.probe":
        return lambda: importlib.import_module(name).main([])
    if name == "scoring.toxicity":  # its parser is built under `if __name__ == "__main__"`
        return lambda: runpy.run_module(name, run_name="__main__")
    module = importlib.import_module(name.removesuffix(".py"))
    return lambda: module.parse_args([])


@pytest.fixture(scope="module")
def accepted():
    """{script: the option strings its parser accepts}."""
    return {name: set(_capture(_entry(name))._option_string_actions) for name in SCRIPTS}


def _line(text, offset):
    return text.count("\n", 0, offset) + 1


def _fenced_commands(text):
    """(start, end) of each logical line of each fenced block: backslash continuations joined, `# comments` cut."""
    for block in FENCE.finditer(text):
        pos = block.start()
        lines = block.group().split("\n")[1:-1]
        pos += len(block.group().split("\n")[0]) + 1
        start = None
        for line in lines:
            if start is None:
                start = pos
            stripped = line.rstrip()
            if not stripped.endswith("\\"):
                comment = re.search(r"(?:^|\s)#", text[start:pos + len(line)])
                yield start, start + comment.start() if comment else pos + len(line)
                start = None
            pos += len(line) + 1
        if start is not None:
            yield start, pos - 1


def _spans(text):
    """(start, end) of every inline code span outside the fenced blocks (a span may wrap onto the next line)."""
    outside = FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), text)
    for span in SPAN.finditer(outside):
        yield span.start(1), span.end(1)


def _flag_columns(text):
    """(start, end, script) of each cell in a markdown table column headed "<script> flags"."""
    pos, columns = 0, {}
    for line in text.split("\n"):
        if line.startswith("|"):
            cells = [m for m in re.finditer(r"(?:[^|\\]|\\.)+", line)]
            header = {i: m.group(1) for i, c in enumerate(cells)
                      if (m := re.fullmatch(rf"\s*({SCRIPT}) flags\s*", c.group()))}
            if header:
                columns = header
            elif not set(line) <= set("|-: "):
                for i, script in columns.items():
                    if i < len(cells):
                        yield pos + cells[i].start(), pos + cells[i].end(), script
        else:
            columns = {}
        pos += len(line) + 1


def _command(script, line, flags, imports=(), code=""):
    return {"script": script, "line": line, "flags": list(flags), "imports": list(imports), "code": code}


def _until_separator(region, at):
    stop = SEPARATOR.search(region, at)
    return region[at:stop.start() if stop else len(region)]


def _imports(code):
    """[(module or `package.attribute`, the name the code calls it by, offset)] of a `python -c` code's imports."""
    out = []
    for i in re.finditer(r"(?:^|[;\n])\s*(?:from\s+([\w.]+)\s+import\s+([\w, ]+)|import\s+([\w., ]+))", code):
        for name in (i.group(2) or i.group(3)).split(","):
            name, _, alias = name.strip().partition(" as ")
            module = f"{i.group(1)}.{name}" if i.group(1) else name
            out.append((module, alias.strip() or (name if i.group(1) else module), i.start()))
    return out


def commands(text):
    """Every command of one markdown text: dicts of its script (None for a `python -c` that runs no entry point), its
    line, its flags [(flag, line)] and, for `python -c`, its code and imports [(module, alias, line)]."""
    found = []
    for start, end in list(_fenced_commands(text)) + list(_spans(text)):
        region = text[start:end]
        for c in PYTHON_C.finditer(region):
            code, at = c.group("code"), start + c.start("code")
            main = re.search(r"\b(w2s|train)\.main\(", code)
            flags = [(f.group(), _line(text, at + f.start())) for f in FLAG.finditer(code)]
            flags += [(f.group(), _line(text, start + c.end() + f.start()))
                      for f in FLAG.finditer(_until_separator(region, c.end()))]
            found.append(_command(f"{main.group(1)}.py" if main else None, _line(text, start + c.start()),
                                  flags if main else [], [(m, a, _line(text, at + i)) for m, a, i in _imports(code)],
                                  code))
        entries = [(m.start(), m.group("script") or m.group("module") or m.group("torchrun"), m.end())
                   for m in ENTRY.finditer(region)]
        if not entries and (bare := BARE.match(region)):
            entries = [(bare.start("script"), bare.group("script"), bare.end("script"))]
        for at, script, after in entries:
            found.append(_command(script, _line(text, start + at),
                                  [(f.group(), _line(text, start + after + f.start()))
                                   for f in FLAG.finditer(_until_separator(region, after))]))
    for start, end, script in _flag_columns(text):
        found.append(_command(script, _line(text, start),
                              [(f.group(), _line(text, start + f.start())) for f in FLAG.finditer(text[start:end])]))
    return found


def problems(name, text, accepted):
    """One line per flag a command uses that its script does not accept, per import of a missing module, and per
    attribute a `python -c` takes from an imported module that it does not have."""
    out = []
    for command in commands(text):
        for flag, line in command["flags"]:
            if flag not in accepted[command["script"]]:
                out.append(f"{name}:{line}: {command['script']} does not accept {flag}")
        for module, alias, line in command["imports"]:
            target = _resolve(module)
            if target is None:
                out.append(f"{name}:{line}: python -c imports {module}, which does not exist")
                continue
            for use in re.finditer(rf"(?<![\w.]){re.escape(alias)}\.(\w+)", command["code"]):
                if not hasattr(target, use.group(1)):
                    out.append(f"{name}:{line}: python -c uses {alias}.{use.group(1)}, which {module} does not have")
    return out


def _resolve(name):
    """The module `name` names, or the attribute `from package import attribute` takes; None if there is none."""
    try:
        return importlib.import_module(name)
    except ImportError:
        parent, _, attr = name.rpartition(".")
        try:
            return getattr(importlib.import_module(parent), attr, None) if parent else None
        except ImportError:
            return None


def pages():
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def test_every_command_in_the_readme_and_docs_uses_only_flags_its_script_accepts(accepted):
    found, bad = 0, []
    for page in pages():
        text = page.read_text()
        found += len(commands(text))
        bad += problems(str(page.relative_to(ROOT)), text, accepted)
    assert not bad, "\n".join(bad)
    assert found > 40, f"only {found} commands found in README.md and docs/*.md: is the parsing broken?"


def test_the_checker_reports_a_made_up_flag_and_a_missing_module(accepted):
    doc = "\n".join([
        "Run `python train.py --no-such-flag` or this:",                                   # 1
        "",                                                                                 # 2
        "```bash",                                                                          # 3
        "python w2s.py --task safety \\",                                                   # 4
        "    --seeds 0 1 --made-up 3   # a comment: --not-a-flag",                          # 5
        "W2S_CACHE=/tmp torchrun --nproc_per_node 2 train.py --task toy --bogus",           # 6
        "python -m run.prompting --task safety --imaginary && python eval.py runs/x --n-boot 10",  # 7
        "```",                                                                              # 8
        "and `python -c \"import sys; from experiment import stages; import w2s; w2s.main(sys.argv[1:])\" --nope`",  # 9
        "and `python -c \"import stages\"`; the `w2s.py --fake` flag and `bench.py --suite --device cuda`.",       # 10
        "`python -c \"from data import toy; toy.SIZES; import models.toy_gpt as g; g.SIZES; g.nothing\"` moved.",   # 11
        "| student | train.py flags |",                                                       # 12
        "|---|---|",                                                                        # 13
        "| naive | `--loss logconf --aux-coef --invented` |",                                 # 14
    ])
    assert problems("fake.md", doc, accepted) == [
        "fake.md:5: w2s.py does not accept --made-up",
        "fake.md:6: train.py does not accept --bogus",
        "fake.md:7: run.prompting does not accept --imaginary",
        "fake.md:1: train.py does not accept --no-such-flag",
        "fake.md:9: w2s.py does not accept --nope",
        "fake.md:10: python -c imports stages, which does not exist",
        "fake.md:10: w2s.py does not accept --fake",
        "fake.md:11: python -c uses toy.SIZES, which data.toy does not have",
        "fake.md:11: python -c uses g.nothing, which models.toy_gpt does not have",
        "fake.md:14: train.py does not accept --invented",
    ]
    scripts = [c["script"] for c in commands(doc)]
    assert scripts.count("bench.py") == 1 and scripts.count("eval.py") == 1 and "--nproc_per_node" not in str(
        commands(doc))


# flags of other tools that the pages show: pip, tensorboard, torchrun
OTHER_TOOLS = {"--index-url", "--no-deps", "--logdir", "--nproc_per_node", "--nnodes", "--standalone"}


def test_every_flag_the_pages_name_anywhere_is_some_entry_points(accepted):
    """A flag named in prose (`--recompute-bottom`), outside any command, still has to exist somewhere."""
    known = set().union(*accepted.values()) | OTHER_TOOLS
    bad = [f"{page.relative_to(ROOT)}:{_line(text, flag.start())}: no entry point accepts {flag.group()}"
           for page in pages() for text in [page.read_text()] for flag in FLAG.finditer(text)
           if flag.group() not in known]
    assert not bad, "\n".join(bad)


def test_every_relative_link_in_the_readme_and_docs_points_at_a_file():
    broken = []
    for page in pages():
        text = FENCE.sub("", page.read_text())
        for link in LINK.finditer(text):
            target = link.group(1).split("#", 1)[0]
            if not target or re.match(r"[a-z]+:", target):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: [{link.group()}] -> {target} does not exist")
    assert not broken, "\n".join(broken)
