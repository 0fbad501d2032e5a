-- Removes every object bemi-rs tracking installed. REPLICA IDENTITY settings are left as they are
-- (they may have been set before bemi); reset one with ALTER TABLE t REPLICA IDENTITY DEFAULT.
DROP EVENT TRIGGER IF EXISTS _bemi_create_table_trigger;
DROP EVENT TRIGGER IF EXISTS _bemi_schema_trigger;
DROP FUNCTION IF EXISTS _bemi_schema_trigger_func();
DROP PROCEDURE IF EXISTS _bemi_record_schemas();
DROP FUNCTION IF EXISTS _bemi_schema_json(oid);
DROP FUNCTION IF EXISTS _bemi_type_json(oid);
DROP FUNCTION IF EXISTS _bemi_create_table_trigger_func();
DROP PROCEDURE IF EXISTS _bemi_create_triggers(boolean, boolean);
DROP FUNCTION IF EXISTS _bemi_track_table(oid, boolean, boolean);
-- Signatures of earlier versions.
DROP PROCEDURE IF EXISTS _bemi_create_triggers(boolean);
DROP FUNCTION IF EXISTS _bemi_track_table(oid, boolean);
DROP FUNCTION IF EXISTS _bemi_is_trackable(oid);
-- CASCADE drops the _bemi_statement_trigger of every table.
DROP FUNCTION IF EXISTS _bemi_statement_trigger_func() CASCADE;
DROP FUNCTION IF EXISTS _bemi_trailing_context(text);
DROP FUNCTION IF EXISTS _bemi_trailing_sqlcommenter(text);
