"""The documentation holds together: every relative link of README.md, RESULTS.md, docs/ and
models/README.md leads to a file (and, for a #section, to a heading of it), and the README's
results summary is what ``python -m results.report`` writes from the records now."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", REPO_ROOT / "RESULTS.md", REPO_ROOT / "models" / "README.md",
         *sorted((REPO_ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def anchors(page: Path) -> set[str]:
    """The #fragments GitHub gives the headings of ``page``: lower case, punctuation other
    than hyphens and underscores dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(FENCE.sub("", page.read_text()))
            if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO_ROOT)) for p in PAGES])
def test_relative_links_lead_somewhere(page):
    broken = []
    for target in relative_links(page):
        path, _, fragment = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(target)
        elif fragment and destination.suffix == ".md" and fragment not in anchors(destination):
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"


def test_the_docs_pages_are_all_linked_from_the_readme():
    linked = {(REPO_ROOT / t.partition("#")[0]).resolve()
              for t in relative_links(REPO_ROOT / "README.md")}
    assert not [p.name for p in PAGES if p.parent.name == "docs" and p not in linked]


def test_the_readme_results_summary_is_current():
    """Fails when a run's records changed and python -m results.report was not run."""
    from results import report
    from results.experiments import EXPERIMENTS
    rows = [r for r in (report.summarise(name) for name in EXPERIMENTS) if r is not None]
    readme = (REPO_ROOT / "README.md").read_text()
    assert report.with_summary(readme, rows) == readme, \
        "README.md's results summary is stale: run python -m results.report"


def test_the_method_diagrams_show_the_shapes_of_the_published_models():
    """docs/methods.md draws HyperMAML and BayesHMAML with the published 5-way 1-shot shapes:
    they must be those of the models the published commands build."""
    from cli import config
    from methods import METHODS
    from results.experiments import PUBLISHED_BAYES_HMAML, PUBLISHED_HYPER_MAML
    from runtime import setup
    page = (REPO_ROOT / "docs" / "methods.md").read_text()
    for command in (PUBLISHED_HYPER_MAML, PUBLISHED_BAYES_HMAML):
        opts, _ = config.parse("train", list(METHODS), command.split())
        opts, benchmark = setup.settle(opts, set(), "train")
        model = setup.build_method(opts, benchmark, setup.choose_compute(opts, "cpu"))
        width, features = model.embedding_width(), model.feature.feature_dim
        trunk = [m.out_features for m in model.hypernet.trunk if hasattr(m, "out_features")]
        per_class = {name: head.out_features for name, head in model.hypernet.heads.items()}
        assert f"[5, {features}]" in page and f"[5, {width}]" in page
        assert f"{width} → {' → '.join(map(str, trunk))}" in page
        for head, out in per_class.items():
            assert f"{trunk[-1]} → {out}" in page or f"→ {out}<br/>" in page, head
    assert f"{sum(p.numel() for n, p in model.named_parameters() if n.startswith('classifier'))}" \
        " classifier parameters" in page
    # MAML's diagram: its classifier and inner loop as the cross_char defaults build them.
    opts, _ = config.parse("train", list(METHODS), ["--dataset", "cross_char", "--method",
                                                    "maml", "--n_shot", "1"])
    opts, benchmark = setup.settle(opts, set(), "train")
    maml = setup.build_method(opts, benchmark, setup.choose_compute(opts, "cpu"))
    weight = maml.classifier[-1].weight
    assert f"classifier W [{weight.shape[0]}, {weight.shape[1]}]" in page
    assert f"(x task_update_num: {opts.inner_steps})" in page
    assert f"(train_lr {opts.inner_lr};" in page and f"summed over {opts.n_task} tasks" in page


def test_the_readme_test_count_is_the_suites():
    """'about N tests' in the README's install block: within 10% of what pytest collects."""
    import subprocess
    import sys
    said = int(re.search(r"# about (\d+) tests", (REPO_ROOT / "README.md").read_text()).group(1))
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p",
                           "no:xdist", str(REPO_ROOT / "tests")], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    collected = int(re.search(r"(\d+) tests? collected", done.stdout).group(1))
    assert abs(said - collected) <= 0.1 * collected, (said, collected)


def test_the_kl_weights_methods_md_gives_are_the_codes():
    """docs/methods.md's last-epoch KL weights for the published 1e-24 -> 1e-3."""
    from methods.bayes_hmaml import BayesSettings
    text = " ".join((REPO_ROOT / "docs" / "methods.md").read_text().split())
    quoted = re.search(r"about (\S+) over 2,048 epochs, (\S+) over 128 and (\S+) over 12",
                       text).groups()
    settings = BayesSettings(kl_scale=1e-24, kl_stop_val=1e-3)
    assert list(quoted) == [f"{settings.kl_weight(t - 1, t):.1e}".replace("e-0", "e-")
                            for t in (2048, 128, 12)]
