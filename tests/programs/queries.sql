-- An sqlite3 workload (in-memory database) for comparing the sqlite3 CLI on
-- glibc's malloc and on magpie (tests/real_programs.rs).
.bail on
PRAGMA cache_size = -65536;
CREATE TABLE t(id INTEGER PRIMARY KEY, grp INTEGER, name TEXT, val REAL, blob BLOB);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000)
INSERT INTO t SELECT x, (x * 7919) % 1000, 'name-' || ((x * 31) % 50021), (x % 977) * 1.5, zeroblob(x % 200) FROM c;
CREATE INDEX t_grp ON t(grp);
CREATE INDEX t_name ON t(name, val);
SELECT count(*), sum(grp), total(val), sum(length(blob)) FROM t;
SELECT grp, count(*), round(avg(val), 3), min(name), max(name) FROM t GROUP BY grp ORDER BY grp LIMIT 5;
SELECT name, count(*) AS c FROM t GROUP BY name ORDER BY c DESC, name LIMIT 5;
SELECT count(DISTINCT name) FROM t;
CREATE TABLE u AS SELECT grp, group_concat(id, ',') AS ids FROM (SELECT grp, id FROM t WHERE id % 97 = 0 ORDER BY id) GROUP BY grp;
SELECT count(*), sum(length(ids)) FROM u;
SELECT t.grp, count(*) FROM t JOIN u ON t.grp = u.grp WHERE t.val > 100 GROUP BY t.grp ORDER BY 2 DESC, 1 LIMIT 3;
SELECT id, name, sum(val) OVER (PARTITION BY grp ORDER BY id ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) FROM t WHERE grp = 7 ORDER BY id LIMIT 4;
UPDATE t SET name = upper(name) || printf('%08d', id) WHERE id % 3 = 0;
DELETE FROM t WHERE id % 5 = 0;
SELECT count(*), sum(length(name)) FROM t;
SELECT substr(group_concat(name, ''), 1, 60) FROM (SELECT name FROM t WHERE grp = 1 ORDER BY id);
CREATE TABLE s AS SELECT name, val FROM t ORDER BY val DESC, name LIMIT 100000;
SELECT count(*), min(name), max(name) FROM s;
DROP TABLE s;
VACUUM;
SELECT count(*) FROM t WHERE name LIKE 'NAME-1%';
PRAGMA integrity_check;
