"""deployments/postgres.py and local.py's database choice: the pieces that can go wrong without a server."""

import os
import stat

import pytest

from tests.scripts import deployments_script

postgres = deployments_script("postgres")
local = deployments_script("local")
cli = deployments_script("prefect_cli")
schedules = deployments_script("schedules")


def test_the_database_url_never_shows_its_password_when_printed():
    url = postgres.connection_url(54321, "s3cret-Pass_word")
    for text in (str(url), repr(url), f"{url}", url.render_as_string()):
        assert "s3cret" not in text and "***" in text
    # Only the server's environment carries it, in full.
    full = postgres.server_env(url)["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert full == "postgresql+asyncpg://prefect:s3cret-Pass_word@127.0.0.1:54321/prefect"


def test_the_password_is_generated_once_into_a_private_file_and_kept(tmp_path):
    cluster = postgres.Cluster(tmp_path)
    first = postgres.password(cluster)
    assert len(first) >= 32 and first.isascii()
    assert stat.S_IMODE(cluster.password_file.stat().st_mode) == 0o600
    assert postgres.password(cluster) == first  # the next `up` connects to the same role with it
    assert postgres.password(postgres.Cluster(tmp_path / "other")) != first


def test_a_password_file_others_can_read_is_refused(tmp_path):
    cluster = postgres.Cluster(tmp_path)
    postgres.password(cluster)
    cluster.password_file.chmod(0o644)
    with pytest.raises(postgres.PostgresError, match="readable by others") as caught:
        postgres.password(cluster)
    assert "chmod 600" in caught.value.fix
    assert cluster.password_file.read_text().strip() not in str(caught.value)


def _install(root, version):
    (root / version / "bin").mkdir(parents=True)
    (root / version / "bin" / "pg_ctl").write_text("")


def test_the_newest_installed_postgresql_is_used_for_a_new_cluster(tmp_path):
    for version in ("9.6", "13", "15"):
        _install(tmp_path, version)
    assert postgres.bin_dir(root=tmp_path) == tmp_path / "15" / "bin"


def test_an_existing_cluster_keeps_its_own_major_version(tmp_path):
    root = tmp_path / "lib"
    for version in ("13", "15"):
        _install(root, version)
    cluster = postgres.Cluster(tmp_path / "state")
    cluster.data.mkdir(parents=True)
    (cluster.data / "PG_VERSION").write_text("13\n")
    assert postgres.bin_dir(cluster, root=root) == root / "13" / "bin"
    (cluster.data / "PG_VERSION").write_text("12\n")
    with pytest.raises(postgres.PostgresError, match="PostgreSQL 12") as caught:
        postgres.bin_dir(cluster, root=root)
    assert "postgresql-12" in caught.value.fix


def test_no_postgresql_installed_says_how_to_install_it(tmp_path):
    with pytest.raises(postgres.PostgresError, match="not installed") as caught:
        postgres.bin_dir(root=tmp_path)
    assert "./setup.sh --tests" in caught.value.fix


def test_a_stale_postmaster_pid_file_is_not_taken_for_a_running_cluster(tmp_path):
    cluster = postgres.Cluster(tmp_path)
    assert cluster.running() is None  # no cluster at all
    cluster.data.mkdir(parents=True)
    # The pid of a live process that is not PostgreSQL (this test), as a pid file left by a crash can name.
    (cluster.data / "postmaster.pid").write_text(f"{os.getpid()}\n{cluster.data}\n1700000000\n5432\n")
    assert cluster.running() is None
    (cluster.data / "postmaster.pid").write_text("garbage\n")
    assert cluster.running() is None


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_under_root_a_state_dir_the_postgres_user_cannot_reach_is_refused_before_initdb(tmp_path):
    pytest.importorskip("pwd").getpwnam(postgres.SYSTEM_USER)
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    cluster = postgres.Cluster(closed / "state")
    with pytest.raises(postgres.PostgresError, match="cannot reach") as caught:
        postgres.init(cluster)
    assert "--dir" in caught.value.fix
    assert not cluster.data.exists()


def test_database_is_sqlite_unless_asked_and_only_the_server_gets_a_database_url(tmp_path, monkeypatch):
    assert local.parse_args(["up"]).database == "sqlite"
    assert local.parse_args(["up", "--database", "postgres"]).database == "postgres"
    with pytest.raises(SystemExit):
        local.parse_args(["up", "--database", "mysql"])
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "postgresql+asyncpg://someone:pw@elsewhere/db")
    assert "PREFECT_API_DATABASE_CONNECTION_URL" not in cli.prefect_env(tmp_path, 4200)  # workers, CLI
    assert local.start_database(tmp_path, "sqlite") == {
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}"
    }


def test_down_with_no_postgres_cluster_stops_nothing(tmp_path):
    assert local.stop_database(tmp_path) == []


def test_only_deployments_with_a_schedule_get_a_missed_night_watch(monkeypatch):
    """schedule_targets' answer is what alerts.announce makes missed-night automations for: the on-demand
    smoke-cpu-embedded (no schedule) must not be in it, or every quiet day would raise an alert."""
    from types import SimpleNamespace
    from uuid import uuid4

    import prefect.client.orchestration as orchestration

    deployments = {
        name: SimpleNamespace(id=uuid4(), schedules=[SimpleNamespace(id=uuid4())]) for name in cli.deployments_by_pool()
    }
    deployments["bert-serving-validation/smoke-cpu-embedded"].schedules = []  # as prefect.yaml has it
    changed = []

    class Client:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read_deployment_by_name(self, name):
            return deployments[name]

        def update_deployment_schedule(self, deployment_id, schedule_id, active):
            changed.append((deployment_id, active))

    monkeypatch.setattr(orchestration, "get_client", lambda sync_client: Client())
    env = {"PREFECT_API_URL": "http://127.0.0.1:9/api"}
    active = schedules.schedule_targets(env, local.DEFAULT_POOL, cli.deployments_by_pool())
    assert set(active) == {"nightly-cpu-embedded"}
    assert active["nightly-cpu-embedded"] == deployments["bert-serving-validation/nightly-cpu-embedded"].id
    # The other families' nights are paused (and the engines night, whose pool no worker here polls), this host's on.
    assert sorted(active_ for _, active_ in changed) == [False, False, False, True]
