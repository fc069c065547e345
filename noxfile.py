"""Project tasks: `nox -s demo`, `nox -s tests`, `nox -s tests_compiled`, `nox -s lint typecheck`,
`nox -s build`, `nox -s bench`, `nox -s soak`, `nox -s reliability`."""

from __future__ import annotations

import shutil
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def demo(session: nox.Session) -> None:
    """The quickstart on the embedded SQLite default: no server needed."""
    session.install("-e", ".")
    session.run("python", "examples/quickstart.py")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite: SQLite, and MariaDB through a throwaway server the tests start."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs, env={"ACONN_COMPILED": "0"})


def _compiled(session: nox.Session, extras: str) -> str:
    """aconn's opt-in compiled build (pyproject.toml's mypyc hook; needs a C compiler), with
    ``extras``: the requirement to install. Built from an sdist, in pip's own directory, so that
    the compiled modules never land in the checkout, where they would shadow its .py files."""
    session.install("build>=1.2")
    # beside the venv, not in session.create_tmp(): that points TMPDIR into the checkout for the rest
    # of the session, where the suite's Galera nodes (run as the mysql user) cannot create their files
    dist = Path(session.bin).parent / "sdist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run_install("python", "-m", "build", "--sdist", "--outdir", str(dist))
    return f"{next(dist.glob('aconn-*.tar.gz'))}[{extras}]"


_COMPILE = {"HATCH_BUILD_HOOK_ENABLE_MYPYC": "true"}


@nox.session
def tests_compiled(session: nox.Session) -> None:
    """The whole suite again on the opt-in compiled build: aconn installed from a wheel whose
    scope and pool modules mypyc compiled."""
    session.install(_compiled(session, "test"), env=_COMPILE)
    session.run("pytest", *session.posargs, env={"ACONN_COMPILED": "1"})


@nox.session
def build(session: nox.Session) -> None:
    """The sdist and the wheel: built, their metadata checked, the wheel installed in a fresh
    virtual environment, and the quickstart run on it (from outside the checkout)."""
    session.install("build>=1.2", "twine>=5")
    work = Path(session.create_tmp()).resolve()
    dist = work / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(dist))
    built = sorted(dist.iterdir())
    session.run("twine", "check", "--strict", *map(str, built))
    wheel = next(path for path in built if path.suffix == ".whl")
    venv = work / "wheel-venv"
    session.run("python", "-m", "venv", "--clear", str(venv))
    python = str(venv / "bin" / "python")
    session.run(python, "-m", "pip", "install", "--quiet", str(wheel), external=True)
    probe = (
        "import aconn, pathlib, sys; here = pathlib.Path(aconn.__file__).parent; "
        "assert 'site-packages' in str(here), here; assert (here / 'py.typed').exists(); "
        "assert not (here.parent / 'tests').exists(); print('installed aconn', aconn.__version__, 'from', here)"
    )
    quickstart = str(Path("examples", "quickstart.py").resolve())
    session.chdir(str(work))  # not the checkout: aconn comes from the wheel
    session.run(python, "-c", probe, external=True)
    session.run(python, quickstart, external=True)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", "aconn", "tests", "examples", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "aconn")


@nox.session
def typecheck(session: nox.Session) -> None:
    extras = ".[postgresql,asyncpg,asyncmy,otel,sqlalchemy]"
    session.install("-e", extras, "mypy>=1.11", "asyncpg-stubs", "pytest>=8", "pytest-asyncio>=0.24")
    session.run("mypy")


@nox.session
def soak(session: nox.Session) -> None:
    """Minutes of mixed load under random faults (kills, restarts, freezes, resets); prints the figures."""
    session.install("-e", ".[test]")
    session.run("python", "tests/soak.py", *(session.posargs or ["--seconds", "300"]))


@nox.session
def bench(session: nox.Session) -> None:
    """aconn against aiomysql.Pool, asyncmy.Pool, SQLAlchemy and connect-per-request; writes
    docs/performance.md and .png; then on PostgreSQL against asyncpg.Pool and psycopg_pool:
    docs/performance-postgresql.md; then what RESET_ON_RELEASE costs (printed); then SQLAlchemy over
    aconn against plain SQLAlchemy: the SQLAlchemy section of docs/performance.md; then the web
    workload with connections scarce and plentiful on three drivers: its section there too; then
    where a web request's CPU goes (py-spy under wrk): a section there as well."""
    session.install("-e", ".[test,bench]")
    # the web workload also runs the middleware on the compiled build, from a venv of its own
    compiled = Path(session.bin).parent / "compiled-venv"
    session.run_install("python", "-m", "venv", "--clear", str(compiled))
    compiled_python = str(compiled / "bin" / "python")
    requirement = _compiled(session, "test")
    session.run_install(compiled_python, "-m", "pip", "install", "--quiet", requirement, env=_COMPILE, external=True)
    session.run("python", "benchmarks/run.py", *session.posargs)
    session.run("python", "benchmarks/postgresql.py", *[a for a in session.posargs if a == "--quick"])
    session.run("python", "benchmarks/reset_cost.py", *(["--rounds", "1"] if "--quick" in session.posargs else []))
    session.run("python", "benchmarks/sqlalchemy_on_aconn.py", *[a for a in session.posargs if a == "--quick"])
    quick = [a for a in session.posargs if a == "--quick"]
    session.run("python", "benchmarks/web.py", "--compiled-python", compiled_python, *quick)
    session.run("python", "benchmarks/web_profile.py", *(["--rounds", "2"] if "--quick" in session.posargs else []))


@nox.session
def reliability(session: nox.Session) -> None:
    """aconn, aiomysql.Pool and SQLAlchemy side by side under faults; writes the table in docs/reliability.md."""
    session.install("-e", ".[test,bench]")
    session.run("python", "benchmarks/reliability.py", *session.posargs)
