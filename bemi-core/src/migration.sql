-- bemi-rs tracking, installed by `bemi migrate` / bemi_core::migration::up().
--
-- A statement-level BEFORE trigger on every table reads the client's query text and, when it ends
-- with a /*Bemi {json} Bemi*/ comment, emits ONE transactional logical-decoding message with
-- prefix '_bemi' before the statement's rows (one per table the statement writes). A statement without a comment that follows one with
-- a context in the same transaction emits '{}', so that its rows do not inherit that context.
-- Running this script twice is harmless.

-- The trigger. It must never fail the user's statement, whatever the statement's text and
-- whatever the session's search_path (schema-per-tenant apps set it, and '' is legal): it calls
-- only pg_catalog functions, schema-qualified, that cannot fail on any text, and it takes every
-- substring with a length it has checked to be positive. It needs no function of its own.
--
-- The context of a query that ends with a Bemi comment: the fast path handles what the adapters
-- write — the comment at the very end, JSON without '*' (escaped as \u002a). Anything else
-- (comments of other Bemi libraries, '/*Bemi ' earlier in the SQL, trailing whitespace or ';')
-- takes the careful way: the last '/*Bemi ' of the query with trailing whitespace and ';'
-- trimmed opens the trailing comment.
-- A transaction-local flag remembers that a context was emitted, so that a later statement
-- without one emits '{}' (its rows must not inherit the context).
-- Without a Bemi comment, a trailing sqlcommenter comment (`/*key='value',…*/`, as Rails' query
-- log tags, Django, Spring, Prisma and google-cloud-sqlcommenter append it) is emitted as a
-- '_bemi_sqlcommenter' message (the worker decodes its keys and values), unless the setting
-- bemi.sqlcommenter is 'off' (ALTER DATABASE … SET bemi.sqlcommenter = 'off'). A context an
-- adapter emitted for the same statement wins: the worker drops a sqlcommenter message that
-- directly follows one.
CREATE OR REPLACE FUNCTION _bemi_statement_trigger_func() RETURNS trigger
LANGUAGE plpgsql
AS $bemi$
DECLARE
  query text := pg_catalog.current_query();
  trimmed text;
  context text;
  opening int;
  prefix text := '_bemi';
BEGIN
  -- The common case first, and cheapest: a query that does not end with a comment (after
  -- trailing whitespace and ';') has no context of its own.
  IF pg_catalog.right(query, 2) <> '*/'
     AND pg_catalog.right(pg_catalog.rtrim(query, E' \t\r\n;'), 2) <> '*/' THEN
    IF pg_catalog.current_setting('bemi.context_emitted', true) = 't' THEN
      PERFORM pg_catalog.pg_logical_emit_message(true, '_bemi', '{}');
      PERFORM pg_catalog.set_config('bemi.context_emitted', 'f', true);
    END IF;
    RETURN NULL;
  END IF;

  IF pg_catalog.right(query, 7) = ' Bemi*/' THEN
    -- Fast path: the first '/*Bemi ' opens a comment that ends the query, without any '*'.
    opening := pg_catalog.strpos(query, '/*Bemi ');
    IF opening > 0 AND pg_catalog.length(query) - opening - 13 > 0 THEN
      context := pg_catalog.substr(query, opening + 7, pg_catalog.length(query) - opening - 13);
      IF pg_catalog.strpos(context, '*') > 0 THEN
        context := NULL;
      END IF;
    END IF;
  END IF;

  IF context IS NULL AND pg_catalog.strpos(query, ' Bemi*/') > 0 THEN
    -- The careful way: the last '/*Bemi ' (found in the reversed text, where it reads
    -- ' imeB*/') opens the comment that ends the trimmed query.
    trimmed := pg_catalog.rtrim(query, E' \t\r\n;');
    IF pg_catalog.right(trimmed, 7) = ' Bemi*/' THEN
      opening := pg_catalog.strpos(pg_catalog.reverse(trimmed), ' imeB*/');
      IF opening > 8 THEN
        context := NULLIF(pg_catalog.substr(trimmed, pg_catalog.length(trimmed) - opening + 2,
                                            opening - 8), '');
      END IF;
    END IF;
  END IF;

  IF context IS NULL
     AND pg_catalog.right(pg_catalog.rtrim(query, E' \t\r\n;'), 2) = '*/'
     AND pg_catalog.current_setting('bemi.sqlcommenter', true) IS DISTINCT FROM 'off' THEN
    -- The body of the last '/*' comment, when it ends the trimmed query and starts `key=`.
    trimmed := pg_catalog.rtrim(query, E' \t\r\n;');
    opening := pg_catalog.strpos(pg_catalog.reverse(trimmed), '*/');
    IF opening > 3 THEN
      context := pg_catalog.substr(trimmed, pg_catalog.length(trimmed) - opening + 2, opening - 3);
      IF context OPERATOR(pg_catalog.~) '^\s*[A-Za-z0-9_.~%-]+\s*=\s*\S' THEN
        context := pg_catalog.btrim(context);
        prefix := '_bemi_sqlcommenter';
      ELSE
        context := NULL;
      END IF;
    END IF;
  END IF;

  IF context IS NOT NULL THEN
    PERFORM pg_catalog.pg_logical_emit_message(true, prefix, context);
    IF pg_catalog.current_setting('bemi.context_emitted', true) IS DISTINCT FROM 't' THEN
      PERFORM pg_catalog.set_config('bemi.context_emitted', 't', true);
    END IF;
  ELSIF pg_catalog.current_setting('bemi.context_emitted', true) = 't' THEN
    PERFORM pg_catalog.pg_logical_emit_message(true, '_bemi', '{}');
    PERFORM pg_catalog.set_config('bemi.context_emitted', 'f', true);
  END IF;
  RETURN NULL;
END;
$bemi$;

-- Helpers of earlier versions of this migration, which the trigger above no longer calls.
DROP FUNCTION IF EXISTS _bemi_trailing_context(text);
DROP FUNCTION IF EXISTS _bemi_trailing_sqlcommenter(text);

-- Tables that are never tracked: system and temporary schemas, unlogged and temporary tables,
-- tables owned by extensions, and the capture worker's own tables (`_bemi*`, and a `changes`
-- table with the columns of Bemi's audit table, or one of its monthly/default partitions).
CREATE OR REPLACE FUNCTION _bemi_is_trackable(relation oid) RETURNS boolean
LANGUAGE sql STABLE
AS $bemi$
  SELECT c.relkind IN ('r', 'p')
     AND c.relpersistence = 'p'
     AND n.nspname NOT IN ('pg_catalog', 'information_schema')
     AND n.nspname NOT LIKE 'pg\_%'
     AND c.relname NOT LIKE '\_bemi%'
     AND NOT (
       c.relname OPERATOR(pg_catalog.~) '^changes(_default|_y[0-9]{4}m[0-9]{2})?$'
       AND (SELECT pg_catalog.count(*) FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND NOT a.attisdropped
               AND a.attname IN ('primary_key', 'before', 'after', 'context', 'operation',
                                 'committed_at', 'transaction_id', 'position')) = 8
     )
     AND NOT EXISTS (
       SELECT 1 FROM pg_catalog.pg_depend d
        WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
          AND d.objid = c.oid AND d.deptype = 'e'
     )
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  WHERE c.oid = relation
$bemi$;

-- Earlier signatures (without the comment_trigger choice): replaced, not overloaded.
DROP PROCEDURE IF EXISTS _bemi_create_triggers(boolean);
DROP FUNCTION IF EXISTS _bemi_track_table(oid, boolean);

-- Installs the trigger on one table (if missing; or removes it when comment_trigger is false:
-- every writer then carries its context as the adapters' message, and writes pay nothing for
-- tracking on the server); when asked, sets REPLICA IDENTITY FULL, which
-- gives the capture worker full before-images of updated and deleted rows; and adds the table to
-- the capture worker's publications (those it marked with the comment 'bemi-rs'), so that its
-- changes are streamed from its creation on. Partitions are published through their root.
CREATE OR REPLACE FUNCTION _bemi_track_table(relation oid, replica_identity_full boolean,
                                              comment_trigger boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $bemi$
DECLARE
  publication name;
BEGIN
  IF NOT coalesce(_bemi_is_trackable(relation), false) THEN
    RETURN;
  END IF;
  IF comment_trigger AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger
                  WHERE tgrelid = relation AND tgname = '_bemi_statement_trigger') THEN
    EXECUTE pg_catalog.format(
      'CREATE TRIGGER _bemi_statement_trigger BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
      'FOR EACH STATEMENT EXECUTE FUNCTION _bemi_statement_trigger_func()',
      relation::pg_catalog.regclass);
  ELSIF NOT comment_trigger THEN
    EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS _bemi_statement_trigger ON %s',
                              relation::pg_catalog.regclass);
  END IF;
  IF replica_identity_full AND (SELECT relreplident FROM pg_catalog.pg_class WHERE oid = relation) <> 'f' THEN
    EXECUTE pg_catalog.format('ALTER TABLE %s REPLICA IDENTITY FULL', relation::pg_catalog.regclass);
  END IF;
  IF NOT (SELECT relispartition FROM pg_catalog.pg_class WHERE oid = relation) THEN
    FOR publication IN
      SELECT p.pubname FROM pg_catalog.pg_publication p
       WHERE NOT p.puballtables
         AND pg_catalog.obj_description(p.oid, 'pg_publication') = 'bemi-rs'
         AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel r
                          WHERE r.prpubid = p.oid AND r.prrelid = relation)
    LOOP
      BEGIN
        EXECUTE pg_catalog.format('ALTER PUBLICATION %I ADD TABLE %s',
                                  publication, relation::pg_catalog.regclass);
      EXCEPTION WHEN insufficient_privilege THEN
        RAISE WARNING 'bemi: could not add % to publication %: %. The capture worker adds it '
          'at its next check; changes made before then are not captured.',
          relation::pg_catalog.regclass, publication, SQLERRM;
      END;
    END LOOP;
  END IF;
END;
$bemi$;

-- Tracks every ordinary and partitioned table of every non-system schema. Call it again after
-- creating tables if the event trigger below could not be installed.
CREATE OR REPLACE PROCEDURE _bemi_create_triggers(
  replica_identity_full boolean DEFAULT {{REPLICA_IDENTITY_FULL}},
  comment_trigger boolean DEFAULT {{COMMENT_TRIGGER}})
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $bemi$
DECLARE
  relation oid;
BEGIN
  FOR relation IN
    SELECT c.oid FROM pg_catalog.pg_class c
     WHERE c.relkind IN ('r', 'p') AND _bemi_is_trackable(c.oid)
     ORDER BY c.oid
  LOOP
    PERFORM _bemi_track_table(relation, replica_identity_full, comment_trigger);
  END LOOP;
END;
$bemi$;

-- Tracks tables created later. It runs with the rights of its owner (the superuser who installed
-- the event trigger), so that tables created by any role get the trigger and are published. A
-- failure here must not fail the user's CREATE TABLE: it becomes a warning that says what to do.
CREATE OR REPLACE FUNCTION _bemi_create_table_trigger_func() RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $bemi$
DECLARE
  created record;
BEGIN
  FOR created IN
    SELECT objid FROM pg_catalog.pg_event_trigger_ddl_commands()
     WHERE classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND object_type = 'table'
  LOOP
    BEGIN
      PERFORM _bemi_track_table(created.objid, {{REPLICA_IDENTITY_FULL}}, {{COMMENT_TRIGGER}});
    EXCEPTION WHEN OTHERS THEN
      RAISE WARNING 'bemi: could not track new table %: % (%). Run CALL _bemi_create_triggers(); as the table owner.',
        created.objid::pg_catalog.regclass, SQLERRM, SQLSTATE;
    END;
  END LOOP;
END;
$bemi$;

-- Schema history through the WAL: a description of a tracked table as a JSON text — its oid,
-- schema and name, the columns of its primary key (else of its replica identity index), and each
-- column with its type resolved through domains and arrays to a base type, and whether it is
-- generated (pgoutput leaves generated columns out) — which the capture worker keeps, in WAL
-- order, to take keys and types as of each change, after checking each description against the
-- columns the WAL itself gives.
CREATE OR REPLACE FUNCTION _bemi_type_json(type_oid oid) RETURNS pg_catalog.json
LANGUAGE plpgsql STABLE
AS $bemi$
DECLARE
  current oid := type_oid;
  depth int := 0;
  entry record;
BEGIN
  LOOP
    SELECT t.typtype, t.typcategory, t.typelem, t.typbasetype INTO entry
      FROM pg_catalog.pg_type t WHERE t.oid = current;
    EXIT WHEN NOT FOUND;
    IF entry.typtype = 'd' AND entry.typbasetype <> 0 THEN
      current := entry.typbasetype;
    ELSIF entry.typcategory = 'A' AND entry.typelem <> 0 AND depth < 8 THEN
      depth := depth + 1;
      current := entry.typelem;
    ELSE
      EXIT;
    END IF;
  END LOOP;
  RETURN pg_catalog.json_build_object('base', current, 'array_depth', depth);
END;
$bemi$;

CREATE OR REPLACE FUNCTION _bemi_schema_json(relation oid) RETURNS text
LANGUAGE sql STABLE
AS $bemi$
  SELECT pg_catalog.json_build_object(
           'oid', c.oid,
           'schema', n.nspname,
           'table', c.relname,
           'key', coalesce((
             SELECT pg_catalog.json_agg(a.attname ORDER BY k.ord)
               FROM pg_catalog.pg_index i
               CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indrelid = c.oid
                AND i.indexrelid = coalesce(
                      (SELECT x.indexrelid FROM pg_catalog.pg_index x
                        WHERE x.indrelid = c.oid AND x.indisprimary LIMIT 1),
                      (SELECT x.indexrelid FROM pg_catalog.pg_index x
                        WHERE x.indrelid = c.oid AND x.indisreplident LIMIT 1))), '[]'),
           'columns', coalesce((
             SELECT pg_catalog.json_agg(pg_catalog.json_build_object(
                      'name', a.attname, 'type', _bemi_type_json(a.atttypid),
                      'generated', a.attgenerated <> '') ORDER BY a.attnum)
               FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]')
         )::text
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
   WHERE c.oid = relation
$bemi$;

-- Emits the description of every tracked table a DDL command touched, as a transactional
-- '_bemi_schema' message in the command's transaction: the worker reads it in WAL order, after
-- the rows written before the change and before those written after it. Never fails the DDL: a
-- description that cannot be built becomes {"oid": …, "unknown": true}, for which the worker
-- reads the catalog instead.
--
-- The messages are emitted outside the exception block's subtransaction, then followed by an
-- empty one: logical decoding orders a message by the position where it *ends*, which is where
-- the next record starts, and orders records of different subtransactions only by position, so a
-- message could tie with (and be decoded after) a row written right after it in another
-- subtransaction (a DDL in a released savepoint, then an INSERT). The empty message takes that
-- tie; the descriptions come strictly before any later row.
CREATE OR REPLACE FUNCTION _bemi_schema_trigger_func() RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $bemi$
DECLARE
  touched oid;
  description text;
  emitted boolean := false;
BEGIN
  FOR touched IN
    SELECT DISTINCT coalesce(i.indrelid, c.objid)
      FROM pg_catalog.pg_event_trigger_ddl_commands() c
      -- An index's table, for CREATE INDEX / ALTER INDEX (a replica identity index).
      LEFT JOIN pg_catalog.pg_index i ON i.indexrelid = c.objid
     WHERE c.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
       AND c.object_type IN ('table', 'table column', 'table constraint', 'index')
  LOOP
    description := NULL;
    BEGIN
      IF coalesce(_bemi_is_trackable(touched), false) THEN
        description := _bemi_schema_json(touched);
      END IF;
    EXCEPTION WHEN OTHERS THEN
      RAISE WARNING 'bemi: could not record the new schema of %: % (%). The capture worker reads the catalog for it instead.',
        touched::pg_catalog.regclass, SQLERRM, SQLSTATE;
      description := pg_catalog.json_build_object('oid', touched, 'unknown', true)::text;
    END;
    IF description IS NOT NULL THEN
      PERFORM pg_catalog.pg_logical_emit_message(true, '_bemi_schema', description);
      emitted := true;
    END IF;
  END LOOP;
  IF emitted THEN
    PERFORM pg_catalog.pg_logical_emit_message(true, '_bemi_schema', '');
  END IF;
END;
$bemi$;

-- A baseline: the description of every tracked table now, for a worker already streaming.
CREATE OR REPLACE PROCEDURE _bemi_record_schemas()
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $bemi$
DECLARE
  relation oid;
BEGIN
  FOR relation IN
    SELECT c.oid FROM pg_catalog.pg_class c
     WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND _bemi_is_trackable(c.oid)
     ORDER BY c.oid
  LOOP
    PERFORM pg_catalog.pg_logical_emit_message(true, '_bemi_schema', _bemi_schema_json(relation));
  END LOOP;
  -- Takes the position tie (see _bemi_schema_trigger_func).
  PERFORM pg_catalog.pg_logical_emit_message(true, '_bemi_schema', '');
END;
$bemi$;

CALL _bemi_create_triggers();

-- Event triggers need superuser (or rds_superuser and the like); without it, tracking still works
-- for existing tables and new ones need CALL _bemi_create_triggers();
DO $bemi$
BEGIN
  DROP EVENT TRIGGER IF EXISTS _bemi_create_table_trigger;
  CREATE EVENT TRIGGER _bemi_create_table_trigger ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO')
    EXECUTE FUNCTION _bemi_create_table_trigger_func();
EXCEPTION WHEN insufficient_privilege THEN
  RAISE WARNING 'bemi: tables created from now on are not tracked automatically: creating an event trigger needs superuser (%). Run CALL _bemi_create_triggers(); after creating tables, or run this migration as a superuser.', SQLERRM;
END;
$bemi$;

-- The schema history: also an event trigger (superuser). Without it the capture worker reads
-- keys from the catalog as it is when it reads them, and says so when it starts.
DO $bemi$
BEGIN
  DROP EVENT TRIGGER IF EXISTS _bemi_schema_trigger;
  CREATE EVENT TRIGGER _bemi_schema_trigger ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE', 'CREATE INDEX',
                 'ALTER INDEX', 'DROP INDEX')
    EXECUTE FUNCTION _bemi_schema_trigger_func();
EXCEPTION WHEN insufficient_privilege THEN
  RAISE WARNING 'bemi: schema changes are not recorded in the WAL: creating an event trigger needs superuser (%). The capture worker then takes keys from the catalog of the moment it reads a change, which is wrong for a change decoded after a later schema change of its table. Run this migration as a superuser.', SQLERRM;
END;
$bemi$;

CALL _bemi_record_schemas();
