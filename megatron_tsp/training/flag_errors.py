"""Megatron's own argument checks, reported with the flags the user typed.

Megatron's validate_args (and the tokenizer and config builders that run after it, still before
any process group) answers many bad values with a bare `assert`, a ZeroDivisionError or a
TypeError, whose text, if any, names Python attributes rather than flags. Pre-checking each of
its hundreds of checks would chase every Megatron release; instead pretrain_qwen3.py hands what
they raise to `describe`, which finds the failing statement, the `args.<dest>` values it reads,
and the option strings Megatron's parser registers for those dests (issue 11).
"""

import argparse
import ast
import copy
import functools
import traceback
from typing import Dict, Iterable, List, Optional, Tuple

# what Megatron raises for a value it refuses; anything else is not a flag error
TRANSLATED = (AssertionError, ZeroDivisionError, TypeError, ValueError)
# what Megatron's checks read argument values through: `args`, and in the config dataclasses
# built field by field from the args (*config.py, fields named as the dests), `self`
_ARGS = "args"
_CONFIG_SELF = "self"


def _megatron_options(extra_args_provider) -> Dict[str, List[argparse.Action]]:
    """{dest: its actions} of Megatron's parser, built as megatron.training.arguments does."""
    from megatron.training.arguments import add_megatron_arguments
    parser = argparse.ArgumentParser(allow_abbrev=False)
    extra_args_provider(add_megatron_arguments(parser))
    options: Dict[str, List[argparse.Action]] = {}
    for action in parser._actions:
        if action.option_strings:
            options.setdefault(action.dest, []).append(action)
    return options


@functools.lru_cache(maxsize=None)
def _tree(filename: str) -> Optional[ast.AST]:
    try:
        with open(filename, encoding="utf-8") as source:
            return ast.parse(source.read())
    except (OSError, SyntaxError, ValueError):
        return None


def _span(node: ast.stmt) -> int:
    return node.end_lineno - node.lineno


def _located(filename: str, lineno: int) -> Tuple[Optional[ast.AST], Optional[ast.AST]]:
    """The deciding part of the innermost statement at `lineno` (an assert's or an if's test,
    else the whole statement), and the test of the innermost `if` whose body holds it."""
    tree = _tree(filename)
    spanning = [node for node in ast.walk(tree) if isinstance(node, ast.stmt)
                and node.lineno <= lineno <= node.end_lineno] if tree else []
    if not spanning:
        return None, None
    statement = min(spanning, key=_span)
    guards = [node for node in spanning if isinstance(node, ast.If) and node is not statement
              and node.body[0].lineno <= lineno <= node.body[-1].end_lineno]
    guard = min(guards, key=_span).test if guards else None
    if isinstance(statement, (ast.Assert, ast.If, ast.While)):
        return statement.test, guard
    return statement, guard


def _reads(node: Optional[ast.AST], options, names) -> List[str]:
    """The dests `node` reads as `<name>.<dest>`; [] unless one of them is a flag's."""
    dests = []
    for child in ast.walk(node) if node is not None else ():
        if (isinstance(child, ast.Attribute) and isinstance(child.ctx, ast.Load)
                and isinstance(child.value, ast.Name) and child.value.id in names
                and child.attr not in dests):
            dests.append(child.attr)
    return dests if any(dest in options for dest in dests) else []


class _ToFlags(ast.NodeTransformer):
    """args.global_batch_size -> --global-batch-size, in a copy of a check's source."""

    def __init__(self, spelling: Dict[str, str], names):
        self.spelling, self.names = spelling, names

    def visit_Attribute(self, node):
        if isinstance(node.value, ast.Name) and node.value.id in self.names:
            return ast.Name(id=self.spelling.get(node.attr, node.attr), ctx=node.ctx)
        return self.generic_visit(node)

    def source(self, node: ast.AST) -> str:
        return ast.unparse(self.visit(copy.deepcopy(node))).strip()


def _shown(flag: str, action: argparse.Action, value) -> str:
    if value is None or (action.nargs == 0 and value != action.const):
        return f"{flag} not given"
    if action.nargs == 0:  # store_true / store_false, given
        return flag
    if isinstance(value, (list, tuple)):
        return f"{flag} {' '.join(map(str, value))}"
    return f"{flag} {value}"


def describe(error: BaseException, args, argv: Iterable[str], extra_args_provider) -> str:
    """The flags (as typed, with their values) that the failing Megatron check reads, and the
    check or Megatron's message."""
    options = _megatron_options(extra_args_provider)
    frames = traceback.extract_tb(error.__traceback__)
    message = str(error).strip()
    for frame in reversed(frames):  # innermost first: the check itself, then its callers
        names = (_ARGS, _CONFIG_SELF) if frame.filename.endswith("config.py") else (_ARGS,)
        condition, guard = _located(frame.filename, frame.lineno)
        dests = _reads(condition, options, names)
        if dests:
            break
    else:
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        return f"Megatron refused the arguments: {type(error).__name__}: {message} ({where})"
    dests += [dest for dest in _reads(guard, options, names) if dest not in dests]
    # a dest's spelling the user typed last (argparse keeps the last), else its first
    last = {token.split("=", 1)[0]: i for i, token in enumerate(argv) if token.startswith("--")}
    spelling, shown = {}, []
    for dest in dests:
        if dest not in options:
            if hasattr(args, dest):  # a value Megatron derives, e.g. data_parallel_size
                shown.append(f"{dest}={getattr(args, dest)}")
            continue
        action, spelling[dest] = max(((a, s) for a in options[dest] for s in a.option_strings),
                                     key=lambda pair: last.get(pair[1], -1))
        shown.append(_shown(spelling[dest], action, getattr(args, dest, None)))
    to_flags = _ToFlags(spelling, names)
    check = to_flags.source(condition)
    if _reads(guard, options, names):
        check += f" when {to_flags.source(guard)}"
    if not isinstance(error, AssertionError):
        reason = f"{type(error).__name__} ({message}) in Megatron's `{check}`"
    elif message:
        reason = f"{message} (Megatron's check: {check})"
    else:
        reason = f"Megatron requires {check}"
    return f"{', '.join(shown)}: {reason}"
