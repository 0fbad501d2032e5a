//! End-to-end tests of bemi-rs against a real PostgreSQL (see `bemi_tests` for the set-up).
//!
//! One binary with a custom main (libtest-mimic): the shared cluster starts on first use and is
//! stopped and deleted when every test is done. Each test runs on its own tokio runtime with a
//! deadline, and gets its own database.

// Test code: a slice at a wrong index fails the test that made it (the library crates are
// held to checked slicing).
#![allow(clippy::string_slice)]

mod adapters;
mod audit_filters;
mod audit_query;
mod cancellation;
mod capture_rules;
mod carrier;
mod cli_audit;
mod cli_changes;
mod cli_dev;
mod cli_migration;
mod cli_support;
mod cli_ui;
mod cli_worker;
mod context_isolation;
mod demo;
mod enrichment;
mod fuzz;
mod grpc;
mod hostile;
mod hostile_input;
mod keep_alive;
mod launcher;
mod migration;
mod minimal_examples;
mod nats;
mod open_files;
mod orm_apps;
mod outage;
mod pgbouncer;
mod pools;
mod retention;
mod revert;
mod schema_history;
mod serve;
mod spawned_tasks;
mod sqlcommenter;
mod startup;
mod time_travel;
mod tls;
mod todo_apps;
mod todo_hostile;
mod todo_load;
mod trace_ids;
mod tracking_never_fails;
mod transaction_identity;
mod ui_browser;
mod ui_http;
mod ui_security;
mod web_frameworks;
mod worker_capture;
mod worker_crash;
mod worker_hazards;
mod worker_large;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bemi_tests::{TestCluster, TestResult};
use libtest_mimic::{Arguments, Failed, Trial};

/// Every test must finish within this time.
const TEST_TIMEOUT: Duration = Duration::from_secs(600);

type TestFuture = Pin<Box<dyn Future<Output = TestResult> + Send>>;
type TestFn = fn(Arc<TestCluster>) -> TestFuture;

macro_rules! tests {
    ($($path:path),* $(,)?) => {
        vec![$(
            (stringify!($path).replace(' ', ""), (|cluster| Box::pin($path(cluster))) as TestFn)
        ),*]
    };
}

fn all_tests() -> Vec<(String, TestFn)> {
    tests![
        grpc::unary_and_streaming_calls_of_200_clients_carry_their_own_context,
        ui_browser::a_support_engineer_finds_diffs_history_and_reverts_a_request_in_chromium,
        minimal_examples::the_mounted_ui_example_shows_the_write_to_its_users,
        cli_ui::ui_needs_a_token_off_loopback_and_serves_with_one,
        ui_http::the_api_and_exports_return_exactly_the_modelled_changes,
        ui_http::without_a_changes_table_the_ui_says_to_start_the_worker,
        hostile_input::hostile_query_strings_get_a_400_that_says_what_to_write,
        hostile_input::hostile_time_arguments_are_usage_errors_not_panics,
        ui_http::tokens_permissions_and_csrf_guard_every_request_and_reverts_name_the_actor,
        ui_security::the_ui_serves_only_its_own_host_and_origin_and_reverts_within_policy,
        ui_security::bemi_ui_sessions_are_server_side_expire_log_out_and_limit_failed_logins,
        ui_security::live_tails_are_capped_and_end_when_their_caller_loses_access,
        ui_browser::a_sibling_subdomain_or_another_site_cannot_revert_in_chromium,
        trace_ids::a_changes_trace_id_is_the_one_its_request_exported,
        sqlcommenter::a_python_clients_sqlcommenter_tags_become_the_context,
        sqlcommenter::a_bemi_context_wins_and_the_setting_turns_sqlcommenter_off,
        adapters::sqlx_pool_write_emits_one_message_before_the_row,
        adapters::sqlx_transaction_and_connection_writes_carry_the_context,
        adapters::tokio_postgres_client_and_transaction_writes_carry_the_context,
        adapters::large_update_and_truncate_emit_one_message_each,
        adapters::transaction_with_contexts_a_b_none_emits_a_b_reset,
        adapters::writes_without_context_emit_no_message,
        adapters::annotated_writes_do_not_fill_the_statement_cache,
        adapters::simple_protocol_queries_stay_simple,
        adapters::pre_prepared_statements_carry_the_context,
        cancellation::sqlx_write_dropped_after_its_emission_leaves_no_context_behind,
        cancellation::tokio_postgres_write_dropped_after_it_was_sent_leaves_no_context_behind,
        cancellation::tokio_postgres_failed_batch_dropped_leaves_no_transaction_open,
        cancellation::seaorm_write_dropped_after_its_emission_leaves_no_context_behind,
        cancellation::diesel_async_write_dropped_before_its_reset_leaves_no_context_behind,
        cancellation::diesel_async_new_statement_outside_a_transaction_carries_its_context,
        cancellation::diesel_async_dropped_write_outside_a_transaction_leaves_none_open,
        cancellation::sqlx_cancelled_writes_keep_every_row_to_its_own_context,
        cancellation::tokio_postgres_cancelled_writes_keep_every_row_to_its_own_context,
        cancellation::seaorm_cancelled_writes_keep_every_row_to_its_own_context,
        cancellation::diesel_async_cancelled_writes_keep_every_row_to_its_own_context,
        carrier::every_write_takes_the_context_in_scope_when_it_ran,
        carrier::a_shared_client_keeps_each_write_in_its_own_transaction,
        pgbouncer::both_adapters_attribute_every_write_through_pgbouncer,
        fuzz::fuzz_annotated_sql_parses_as_the_same_statement,
        fuzz::fuzz_any_context_round_trips_through_the_wal,
        tracking_never_fails::random_comments_and_search_paths_never_fail_a_write,
        transaction_identity::a_change_records_the_full_transaction_id_after_a_wraparound,
        transaction_identity::transaction_ids_that_wrapped_select_only_their_own_changes,
        transaction_identity::two_clusters_whose_databases_share_a_name_keep_their_transactions_apart,
        transaction_identity::a_changes_table_of_an_older_worker_is_migrated_in_place,
        outage::a_destination_outage_loses_and_duplicates_nothing_and_reports_the_lag,
        orm_apps::seaorm_todo_app_keeps_1000_concurrent_contexts_apart,
        orm_apps::deadpool_todo_app_keeps_1000_concurrent_contexts_apart,
        orm_apps::diesel_todo_app_keeps_1000_concurrent_contexts_apart,
        orm_apps::diesel_async_todo_app_keeps_1000_concurrent_contexts_apart,
        orm_apps::hostile_requests_through_the_orm_and_pool_apps_change_nothing_but_their_row,
        orm_apps::diesel_transactions_keep_each_statements_context,
        orm_apps::diesel_async_transactions_keep_each_statements_context,
        orm_apps::on_a_blocking_thread_only_the_helper_carries_the_context,
        orm_apps::seaorm_transactions_keep_each_statements_context,
        pools::deadpool_writes_through_cached_statements_carry_their_own_context,
        pools::deadpool_transactions_keep_each_statements_context,
        pools::bb8_writes_carry_their_own_context,
        nats::through_nats_every_change_is_stored_once_across_kills_and_a_server_restart,
        nats::through_nats_a_destination_outage_is_held_by_the_stream_not_the_slot,
        nats::through_nats_two_stores_share_the_partitions_and_keep_each_rows_order,
        nats::through_nats_a_stream_purged_or_created_again_loses_and_duplicates_nothing,
        nats::through_nats_a_message_the_destination_refuses_is_set_aside_and_its_partition_goes_on,
        nats::through_nats_changes_of_2_and_30_mb_are_stored_whole_across_kills_between_parts,
        nats::through_nats_passwords_tokens_nkeys_credentials_and_tls_reach_servers_that_ask_for_them,
        schema_history::keys_and_values_stay_as_of_each_change_while_streaming,
        schema_history::keys_and_values_stay_as_of_each_change_after_downtime,
        schema_history::a_restart_in_the_middle_resumes_with_the_history_it_had,
        schema_history::a_migration_between_prepare_and_the_first_run_keeps_older_keys,
        schema_history::without_the_event_trigger_the_worker_warns_and_reads_the_catalog,
        schema_history::ddl_in_replica_mode_leaves_no_wrong_key,
        schema_history::ddl_with_the_event_trigger_disabled_leaves_no_wrong_key,
        schema_history::a_forged_schema_message_is_caught_and_keys_stay_right,
        adapters::comments_placed_by_other_bemi_libraries_are_understood,
        context_isolation::concurrent_tasks_keep_their_own_context_through_the_wal,
        hostile::hostile_contexts_never_change_what_a_statement_does,
        launcher::ephemeral_cluster_is_logical_unprivileged_and_removed_on_drop,
        migration::up_tracks_every_schema_and_new_tables,
        migration::up_twice_is_harmless_and_down_removes_everything,
        migration::replica_identity_full_is_switchable,
        migration::worker_tables_and_unlogged_tables_are_not_tracked,
        demo::requests_through_the_axum_app_become_the_seeds_changes_table,
        minimal_examples::the_axum_sqlx_example_attributes_its_write,
        capture_rules::ignored_columns_and_unchanged_updates_are_left_out_and_counted,
        capture_rules::unchanged_updates_are_stored_when_asked,
        capture_rules::a_kill_9_inside_a_mixed_transaction_loses_and_duplicates_nothing,
        minimal_examples::the_actix_tokio_postgres_example_attributes_its_write,
        minimal_examples::the_graphql_example_attributes_its_write,
        demo::the_demo_relies_on_a_running_worker_that_captures_todo,
        worker_crash::kill_9_at_random_moments_loses_and_duplicates_nothing,
        worker_capture::the_image_indexes_follow_the_workers_choice,
        worker_capture::direct_sql_and_statements_are_stitched_to_their_own_context,
        worker_capture::composite_keys_toast_and_every_type_are_stored_as_typed_json,
        worker_capture::malformed_and_per_row_messages_are_stitched_not_fatal,
        worker_capture::the_workers_own_tables_are_never_captured,
        worker_hazards::wal_level_replica_fails_fast_naming_the_fix,
        worker_hazards::a_role_without_replication_fails_fast_naming_the_fix,
        worker_hazards::a_lost_slot_fails_fast_naming_the_fix,
        worker_hazards::an_idle_database_keeps_its_slot_advancing,
        worker_hazards::tables_created_while_running_are_captured_from_their_first_row,
        worker_hazards::a_large_transaction_is_written_in_chunks_exactly_once_across_a_stop,
        worker_hazards::a_postgres_restart_while_streaming_loses_nothing,
        worker_hazards::a_primary_key_added_while_a_synchronous_standby_holds_the_commit_is_used,
        worker_hazards::a_worker_that_is_itself_a_synchronous_standby_does_not_wait_for_itself,
        worker_hazards::two_workers_storing_the_same_changes_do_not_deadlock,
        tls::the_worker_streams_over_verified_tls_and_names_the_fix_when_tls_fails,
        todo_apps::axum_todo_app_seed_requests_carry_their_context,
        todo_apps::actix_todo_app_seed_requests_carry_their_context,
        todo_apps::graphql_todo_app_seed_operations_carry_their_context,
        todo_load::axum_todo_app_keeps_1000_concurrent_contexts_apart,
        todo_load::actix_todo_app_keeps_1000_concurrent_contexts_apart,
        web_frameworks::poem_app_keeps_1000_concurrent_contexts_apart,
        web_frameworks::salvo_app_keeps_1000_concurrent_contexts_apart,
        web_frameworks::salvo_tower_compat_on_1_0_keeps_the_context_like_the_native_hoop,
        web_frameworks::rocket_app_keeps_1000_concurrent_contexts_apart,
        todo_hostile::hostile_request_through_the_axum_app_changes_nothing_but_its_row,
        todo_hostile::hostile_request_through_the_actix_app_changes_nothing_but_its_row,
        todo_hostile::hostile_graphql_variables_change_nothing_but_their_row,
        spawned_tasks::axum_spawned_tasks_keep_the_context_only_with_the_helpers,
        spawned_tasks::actix_spawned_tasks_and_web_block_keep_the_context_only_with_the_helpers,
        open_files::the_soft_open_files_limit_is_raised_to_the_hard_limit,
        startup::example_startup_prepares_a_fresh_database_twice_and_serves,
        startup::example_startup_serves_the_actix_app_and_stops,
        keep_alive::axum_keep_alive_requests_keep_their_own_context,
        keep_alive::actix_keep_alive_requests_keep_their_own_context,
        enrichment::axum_handler_enrichment_reaches_the_wal,
        audit_query::change_query_pages_and_streams_every_match_once,
        cli_migration::migration_sql_prints_the_up_and_down_migrations,
        cli_migration::migration_create_writes_a_pair_that_sqlx_migrate_applies_and_reverts,
        cli_migration::migration_create_never_overwrites,
        cli_migration::migrate_installs_tracking_idempotently,
        cli_worker::worker_binary_captures_serves_metrics_and_exits_0_on_sigterm,
        cli_worker::worker_binary_without_replication_privilege_names_alter_role,
        cli_changes::changes_filters_in_table_and_json_output,
        cli_changes::changes_follow_prints_changes_made_after_it_started,
        cli_changes::changes_follow_prints_a_change_that_arrives_after_a_later_one,
        cli_changes::changes_follow_after_a_large_transaction_prints_only_new_changes,
        cli_dev::dev_captures_into_a_throwaway_database_removed_on_ctrl_c,
        audit_filters::query_filters_return_exactly_the_modelled_rows_of_10_700_captured_changes,
        time_travel::row_and_table_as_of_each_instant_match_plain_sql_snapshots,
        revert::reverting_a_request_restores_both_tables_byte_for_byte,
        revert::uncaptured_redacted_and_truncated_changes_are_refused_clearly,
        retention::prune_removes_only_older_changes_while_the_table_stays_usable,
        retention::monthly_partitions_are_made_ahead_and_old_months_dropped_whole,
        cli_audit::history_at_and_the_new_changes_filters_from_the_command_line,
        cli_audit::revert_refuses_a_conflict_naming_the_row_and_force_proceeds,
        cli_audit::numbers_keep_every_digit_in_the_cli_output,
        cli_audit::worker_partitions_by_month_and_prune_detaches_old_months,
    ]
}

/// Too slow for every run: `cargo test --release -p bemi-tests --test e2e -- --ignored <name>`.
fn ignored_tests() -> Vec<(String, TestFn)> {
    tests![worker_large::a_million_row_transaction_in_bounded_memory]
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    // The load tests hold more sockets than the common soft limit of 1 024 open files.
    open_files::raise_to_hard_limit();
    let mut args = Arguments::from_args();
    // Most tests wait on PostgreSQL, not on the CPU.
    args.test_threads.get_or_insert(4);
    let cluster = Arc::new(TestCluster::new());
    let ignored = ignored_tests().into_iter().map(|test| (test, true));
    let trials = all_tests()
        .into_iter()
        .map(|test| (test, false))
        .chain(ignored)
        .map(|((name, test), ignored)| {
            let cluster = Arc::clone(&cluster);
            Trial::test(name, move || run(test, cluster)).with_ignored_flag(ignored)
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    cluster.cleanup();
    drop(cluster);
    conclusion.exit();
}

fn run(test: TestFn, cluster: Arc<TestCluster>) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("tokio runtime: {e}")))?;
    // A fuzz target runs for its budget (BEMI_FUZZ_SECONDS) on top.
    let timeout = TEST_TIMEOUT + bemi_fuzz::budget().unwrap_or_default();
    let outcome = runtime.block_on(async { tokio::time::timeout(timeout, test(cluster)).await });
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("{error:?}").into()),
        Err(_) => Err(format!("timed out after {timeout:?}").into()),
    }
}
