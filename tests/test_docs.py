"""The README and docs/: every relative link resolves (file and, for a markdown page, heading
anchor), every page is reachable from the README, and the commands of the README's code blocks
name scripts, configs and datasets that exist."""

from __future__ import annotations

import glob
import os.path as osp
import re
from typing import Dict, List, Set

import pytest
from conftest import REPO

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def pages() -> List[str]:
    return [osp.join(REPO, "README.md")] + sorted(glob.glob(osp.join(REPO, "docs", "**", "*.md"), recursive=True))


def anchors(path: str) -> Set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", open(path, encoding="utf-8").read())
    out = set()
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def relative_links(path: str) -> List[str]:
    text = FENCE.sub("", open(path, encoding="utf-8").read())
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def resolve(page: str, target: str) -> str:
    file_part = target.split("#", 1)[0]
    return osp.normpath(osp.join(osp.dirname(page), file_part)) if file_part else page


@pytest.mark.parametrize("page", pages(), ids=lambda p: osp.relpath(p, REPO))
def test_every_relative_link_points_at_something_that_exists(page):
    broken = []
    for target in relative_links(page):
        path = resolve(page, target)
        if not osp.exists(path):
            broken.append(f"{target} (no {osp.relpath(path, REPO)})")
        elif "#" in target and path.endswith(".md") and target.split("#", 1)[1] not in anchors(path):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{osp.relpath(page, REPO)}: " + "; ".join(broken)


def test_every_docs_page_is_reachable_from_the_readme():
    seen: Set[str] = set()
    todo = [osp.join(REPO, "README.md")]
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        todo += [p for p in (resolve(page, t) for t in relative_links(page)) if p.endswith(".md") and osp.isfile(p)]
    unreachable = [osp.relpath(p, REPO) for p in pages() if p not in seen]
    assert not unreachable, f"not linked from the README or a page it links: {unreachable}"


def test_the_readme_is_short():
    assert len(open(osp.join(REPO, "README.md"), encoding="utf-8").read().splitlines()) <= 300


def _trainer_of(script_dir: str) -> str:
    """The trainer a method's scripts run (``fewshot_main TRAINER`` in its main.sh, or a config)."""
    text = open(osp.join(REPO, "scripts", script_dir, "main.sh"), encoding="utf-8").read()
    m = re.search(r"fewshot_\w+ (\w+)", text)
    return m.group(1) if m else ""


def readme_commands() -> List[str]:
    text = open(osp.join(REPO, "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"^```bash\n(.*?)^```", text, re.M | re.S)
    return [line.split("#")[0].strip() for block in blocks for line in block.splitlines() if line.split("#")[0].strip()]


def command_problems(commands: List[str]) -> Dict[str, str]:
    """What is missing for each command: a repository path it names, a script's dataset or
    method config (``scripts/<m>/main.sh DATASET SHOTS CFG`` -> configs/trainers/<Trainer>/CFG.yaml)."""
    datasets = {osp.splitext(osp.basename(p))[0] for p in glob.glob(osp.join(REPO, "configs", "datasets", "*.yaml"))}
    problems: Dict[str, str] = {}
    for cmd in commands:
        for w in cmd.split():  # any repository path a command names
            if re.match(r"^(scripts|configs|benchmarks|fsclip|trainers|tests)/\S+\.(sh|py|yaml)$", w) and \
                    not osp.exists(osp.join(REPO, w)):
                problems[cmd] = f"no {w}"
        m = re.search(r"scripts/(\w+)/(main|ood|prompts|layers|beta_sweep)\.sh\s*(.*)", cmd)
        if m:
            method, name, args = m.group(1), m.group(2), m.group(3).split()
            trainer = "SAFE" if name in ("prompts", "layers", "beta_sweep") else _trainer_of(method)
            positional = [a for a in args if not re.match(r"^[A-Z_.]+$", a)]
            if name == "ood":
                cfg = positional[0] if positional else "rn50"
            else:
                if positional and positional[0] not in datasets:
                    problems[cmd] = f"no configs/datasets/{positional[0]}.yaml"
                cfg = positional[2] if len(positional) > 2 else "rn50"
            if trainer and not osp.isfile(osp.join(REPO, "configs", "trainers", trainer, f"{cfg}.yaml")):
                problems[cmd] = f"no configs/trainers/{trainer}/{cfg}.yaml"
        m = re.search(r"scripts/zsclip/zeroshot\.sh (\w+) (\w+)", cmd)
        if m and not osp.isfile(osp.join(REPO, "configs", "trainers", "ZeroshotCLIP", f"{m.group(2)}.yaml")):
            problems[cmd] = f"no configs/trainers/ZeroshotCLIP/{m.group(2)}.yaml"
        m = re.search(r"fsclip-sweep (\S+)", cmd)
        if m and not osp.isfile(osp.join(REPO, m.group(1))):
            problems[cmd] = f"no {m.group(1)}"
        m = re.search(r"--reference (\w+)", cmd)
        if m and not osp.isfile(osp.join(REPO, "fsclip", "results", "reference", f"{m.group(1)}.json")):
            problems[cmd] = f"no reference table {m.group(1)}"
    return problems


def test_the_readme_s_commands_name_files_that_exist():
    commands = readme_commands()
    assert len(commands) >= 10 and any("scripts/safe/main.sh" in c for c in commands)
    assert not command_problems(commands)


def test_the_command_check_catches_what_is_missing():
    bad = {"bash scripts/safe/main.sh caltech101 16 no_such_cfg": "no configs/trainers/SAFE/no_such_cfg.yaml",
           "bash scripts/coop/main.sh no_such_data 4": "no configs/datasets/no_such_data.yaml",
           "bash scripts/nothing/run.sh": "no scripts/nothing/run.sh",
           "fsclip-results output --reference no_table": "no reference table no_table"}
    assert command_problems(list(bad)) == bad
    assert command_problems(["bash scripts/coop/main.sh caltech101 4 vit_b16", "bash scripts/safe/ood.sh rn50"]) == {}


def test_the_link_check_catches_a_broken_link_and_anchor(tmp_path):
    (tmp_path / "b.md").write_text("# The rerun rule\n\n## SAFE's grid, batched\n", encoding="utf-8")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#the-rerun-rule) [ok2](b.md#safes-grid-batched) [gone](c.md) [bad](b.md#nope) "
                    "[web](https://example.org/x.md)\n```\n[in code](d.md)\n```\n", encoding="utf-8")
    links = relative_links(str(page))
    assert links == ["b.md#the-rerun-rule", "b.md#safes-grid-batched", "c.md", "b.md#nope"]
    assert anchors(str(tmp_path / "b.md")) == {"the-rerun-rule", "safes-grid-batched"}
    missing = [t for t in links if not osp.exists(resolve(str(page), t))]
    assert missing == ["c.md"]
