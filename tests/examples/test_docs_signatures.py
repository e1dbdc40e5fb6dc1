"""The signatures the docs print are the code's: every parameter named, in order, with its default."""
import ast
import inspect
import re
from pathlib import Path

import pytest

import bilevel
import bilevel.compare

DOCS = Path(__file__).resolve().parents[2] / "docs"
NO_DEFAULT = object()


def documented(text: str) -> list[tuple[str, object]]:
    """``(name, default)`` of each parameter of ``a, b=1, *, c=None`` (NO_DEFAULT where none is given; ``...`` for
    a default the docs leave unsaid)."""
    call = ast.parse(f"f({text.replace('*, ', '')})", mode="eval").body
    names = [(arg.id, NO_DEFAULT) for arg in call.args]
    return names + [(kw.arg, ast.literal_eval(kw.value)) for kw in call.keywords]


def actual(obj) -> list[tuple[str, object]]:
    parameters = inspect.signature(obj).parameters.values()
    return [(p.name, NO_DEFAULT if p.default is inspect.Parameter.empty else p.default) for p in parameters
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def assert_same(where: str, doc: list, code: list) -> None:
    assert [name for name, _ in doc] == [name for name, _ in code], f"{where}: parameters differ"
    for (name, doc_default), (_, default) in zip(doc, code):
        if doc_default is ... or repr(default) == "<factory>":  # unsaid, or a dataclass factory (docs: {})
            continue
        assert doc_default == default, f"{where}: {name} defaults to {default!r}, the docs say {doc_default!r}"


API_BLOCKS = re.findall(r"```text\n([\w.]+)\((.*?)\)(?: -> [^\n]*)?\n```", (DOCS / "api.md").read_text(), re.S)


@pytest.mark.parametrize("name, text", API_BLOCKS, ids=[name for name, _ in API_BLOCKS])
def test_api_page_signatures(name, text):
    namespace = bilevel.compare if name == "BilevelProblem" else bilevel
    obj = namespace
    for part in name.removeprefix("bilevel.").split("."):
        obj = getattr(obj, part)
    assert_same(f"api.md {name}", documented(" ".join(text.split())), actual(obj))


METHOD_BULLETS = re.findall(r"^- \*\*(\w+)\*\* \(`(\w+)\((.*?)\)`", (DOCS / "methods.md").read_text(), re.M)


@pytest.mark.parametrize("registered, cls, text", METHOD_BULLETS, ids=[name for name, _, _ in METHOD_BULLETS])
def test_methods_page_signatures(registered, cls, text):
    method = type(bilevel.methods.get(registered))
    assert method.__name__ == cls
    assert_same(f"methods.md {cls}", documented(text), actual(method))


SOLVER_BULLETS = re.findall(r"^- `(\w+Solver)\((.*?)\)`", (DOCS / "api.md").read_text(), re.M)


@pytest.mark.parametrize("cls, text", SOLVER_BULLETS, ids=[name for name, _ in SOLVER_BULLETS])
def test_solver_bullets_signatures(cls, text):
    assert_same(f"api.md {cls}", documented(text), actual(getattr(bilevel.solvers, cls)))


def test_the_pages_have_signatures_to_check():
    assert len(API_BLOCKS) >= 10 and len(METHOD_BULLETS) >= 7 and len(SOLVER_BULLETS) >= 4
