"""How big and how guarded is the labkit package? Prints (no assertions) the figures issue 9 asks
for, for the working tree or for any commit, so a before/after is one command each:

* package lines (every line of every ``labkit/**/*.py``, blank and comment lines included);
* ``raise`` statements;
* guard lines: the lines of ``if`` statements whose whole body is one ``raise`` (an argument
  check written inline), plus the lines of calls into ``labkit.checks`` (a check written once);
* the longest functions (lines from ``def`` to its last line, decorators not counted) and how
  many are over 50 lines;
* where a setting is checked: the lines that name it inside a check (``--setting batch_size``).

    python benchmarks/code_size.py                 # the working tree
    python benchmarks/code_size.py --rev 99acc75   # a commit, read with git show
    python benchmarks/code_size.py --setting batch_size
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from pathlib import Path


def sources(rev: str | None) -> dict[str, str]:
    """{path: text} of every labkit/*.py, from the working tree or from commit ``rev``."""
    if rev is None:
        return {str(p): p.read_text() for p in sorted(Path("labkit").rglob("*.py"))}
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "labkit"],
                           capture_output=True, text=True, check=True).stdout.split()
    return {n: subprocess.run(["git", "show", f"{rev}:{n}"], capture_output=True, text=True,
                              check=True).stdout for n in names if n.endswith(".py")}


CHECK_NAMES = ("positive_int", "optional_positive_int", "positive_float", "fraction", "one_of", "boolean",
               "instance_of", "path_like")


def call_name(node: ast.Call) -> str:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")


def is_guard(node: ast.AST) -> bool:
    """An ``if`` whose body is a single raise: an inline argument check."""
    return isinstance(node, ast.If) and len(node.body) == 1 and isinstance(node.body[0], ast.Raise)


def is_checks_call(node: ast.AST) -> bool:
    """A call into the shared vocabulary: ``checks.f(...)`` or ``f(...)`` for f in labkit.checks."""
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    via_module = isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "checks"
    return via_module or call_name(node) in CHECK_NAMES


def measure(texts: dict[str, str]) -> dict:
    functions, raises, guard_lines, checks_lines = [], 0, set(), set()
    for path, text in texts.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{path}:{node.name}"))
            raises += isinstance(node, ast.Raise)
            if is_guard(node):
                guard_lines.update((path, n) for n in range(node.lineno, node.end_lineno + 1))
            if is_checks_call(node):
                checks_lines.update((path, n) for n in range(node.lineno, node.end_lineno + 1))
    functions.sort(reverse=True)
    return dict(lines=sum(len(t.splitlines()) for t in texts.values()), raises=raises,
                guard_lines=len(guard_lines), checks_lines=len(checks_lines), functions=functions)


def checks_inside(node: ast.AST) -> bool:
    """Does ``node`` raise or call a check function anywhere inside?"""
    return any(isinstance(n, ast.Raise) or (isinstance(n, ast.Call) and
               ("check" in call_name(n).lower() or call_name(n) in CHECK_NAMES)) for n in ast.walk(node))


def names(node: ast.AST, setting: str) -> bool:
    return any(isinstance(n, ast.Constant) and n.value == setting for n in ast.walk(node))


def setting_checks(texts: dict[str, str], setting: str) -> list[str]:
    """Places that check ``setting`` by name: an inline guard, a check call given its name, a table
    entry ``"setting": <something that checks>``, or a loop over names that checks each."""
    found = set()
    for path, text in texts.items():
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            hit = None
            if is_guard(node) and names(node.test, setting):
                hit = node
            elif isinstance(node, ast.Call) and ("check" in call_name(node).lower() or call_name(node) in CHECK_NAMES) \
                    and any(isinstance(a, ast.Constant) and a.value == setting for a in node.args):
                hit = node
            elif isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values):
                    if isinstance(k, ast.Constant) and k.value == setting and checks_inside(v):
                        hit = k
            elif isinstance(node, ast.For) and names(node.iter, setting) and checks_inside(node):
                hit = node
            if hit is not None:
                found.add((path, hit.lineno, lines[hit.lineno - 1].strip()))
    return [f"{p}:{n}: {line}" for p, n, line in sorted(found)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", help="a git commit to measure instead of the working tree")
    ap.add_argument("--top", type=int, default=10, help="how many of the longest functions to list")
    ap.add_argument("--setting", help="list the lines that check this setting by name")
    args = ap.parse_args()
    texts = sources(args.rev)
    m = measure(texts)
    print(f"labkit at {args.rev or 'the working tree'}: {len(texts)} modules, {m['lines']:,} lines, "
          f"{m['raises']} raise statements, {m['guard_lines']} lines of inline guards (if ...: raise), "
          f"{m['checks_lines']} lines of labkit.checks calls")
    longest = m["functions"]
    print(f"functions over 50 lines: {sum(n > 50 for n, _ in longest)}; the longest:")
    for n, name in longest[:args.top]:
        print(f"  {n:4d}  {name}")
    if args.setting:
        hits = setting_checks(texts, args.setting)
        print(f"checks naming {args.setting!r}: {len(hits)}")
        for hit in hits:
            print("  " + hit)


if __name__ == "__main__":
    main()
