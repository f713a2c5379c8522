"""The docs' relative links and quoted commands point at things that exist. Pure file reading, no TensorFlow."""
from __future__ import annotations

import glob
import os
import re
from typing import Iterator, List, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", "bench/README.md", "kubeflow/README.md", "serving/README.md",
        *sorted(os.path.relpath(p, REPO_ROOT) for p in glob.glob(os.path.join(REPO_ROOT, "docs", "*.md")))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
PROJECT_MODULE = re.compile(r"python -m ((?:bench|pipeline|kubeflow|modules|components)(?:\.\w+)*)")
BENCH_FILE = re.compile(r"\bbench/[\w/]+\.py\b")


def prose(path: str) -> str:
    """The file's text without fenced code blocks (links there are not links)."""
    with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as f:
        return re.sub(r"^```.*?^```", "", f.read(), flags=re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but - and _ dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: str) -> List[str]:
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"^```.*?^```", "", f.read(), flags=re.S | re.M)
    return [slug(h) for h in re.findall(r"^#+\s+(.*)$", text, flags=re.M)]


def links() -> Iterator[Tuple[str, str]]:
    for doc in DOCS:
        for target in LINK.findall(prose(doc)):
            if not re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                yield doc, target


def test_every_relative_link_resolves():
    broken = []
    for doc, target in links():
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(REPO_ROOT, os.path.dirname(doc), path)) if path else \
            os.path.join(REPO_ROOT, doc)
        if not os.path.exists(resolved):
            broken.append(f"{doc}: {target} (no {os.path.relpath(resolved, REPO_ROOT)})")
        elif anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
            broken.append(f"{doc}: {target} (no heading #{anchor})")
    assert not broken, "\n".join(broken)


def test_quoted_commands_name_existing_modules_and_scripts():
    missing = []
    for doc in DOCS:
        with open(os.path.join(REPO_ROOT, doc), encoding="utf-8") as f:
            text = f.read()
        for module in set(PROJECT_MODULE.findall(text)):
            base = os.path.join(REPO_ROOT, *module.split("."))
            if not (os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__init__.py"))):
                missing.append(f"{doc}: python -m {module}")
        for script in set(BENCH_FILE.findall(text)):
            if not os.path.isfile(os.path.join(REPO_ROOT, script)):
                missing.append(f"{doc}: {script}")
    assert not missing, "\n".join(missing)


def test_the_slug_is_githubs():
    assert slug("float32 or bfloat16 (`--precision`)") == "float32-or-bfloat16---precision"
    assert slug("Measured on MRPC (MiniLM-L6, real GLUE dev set, 408 examples)") == \
        "measured-on-mrpc-minilm-l6-real-glue-dev-set-408-examples"
