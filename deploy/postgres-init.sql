-- Run once by the postgres image when its volume is new (docker-compose.yaml mounts it into
-- /docker-entrypoint-initdb.d). POSTGRES_DB creates `dagster` (Dagster's runs, events, schedules); these are
-- the other two databases of a deployment, owned by the same role:
CREATE DATABASE oura_lake;    -- the DuckLake catalog (OURA_ASSETS_WAREHOUSE=ducklake:postgres:dbname=oura_lake ...)
-- Coordination between processes and hosts (OURA_ASSETS_COORDINATION=postgres:dbname=oura_budget ...): the shared
-- Oura rate budget, token refresh locks and the encrypted token journal. Named for the first of them.
CREATE DATABASE oura_budget;
