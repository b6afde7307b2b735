//! The kernel's writer and verify, driven through stella's machine.

mod writer {
    use crate::clock::ManualClock;
    use crate::domain::tokens::TokenCommand;
    use crate::kernel::store::Store;
    use crate::kernel::writer::WriterOptions;
    use crate::kernel::{Actor, CommandError, Committed};
    use crate::machine::read;
    use crate::machine::{Command, WriterHandle, channel, open_store};
    use std::sync::Arc;

    fn create(id: &str) -> Command {
        Command::Token(TokenCommand::Create {
            id: id.to_owned(),
            tenant: "default".to_owned(),
            scopes: vec!["orchestrator:read".to_owned()],
            sha256: "00".repeat(32),
            expires_ms: None,
            description: None,
        })
    }

    /// Submits every command, waits until all of them sit in the writer's channel, and only
    /// then starts the writer, so batch boundaries are deterministic.
    fn run_queued(
        commands: &[Command],
        batch_max: usize,
    ) -> (Store, WriterHandle, Vec<Result<Committed, CommandError>>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(&dir.path().join("s.redb")).unwrap();
        let mut opts = WriterOptions::seeded(7);
        opts.batch_max = batch_max;
        let (handle, writer) = channel(store.clone(), Arc::new(ManualClock::new(1_000)), opts).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let results = rt.block_on(async {
            let tasks: Vec<_> = commands
                .iter()
                .cloned()
                .map(|c| {
                    let h = handle.clone();
                    tokio::spawn(async move { h.submit(Actor { name: "test".into() }, c).await })
                })
                .collect();
            while handle.backlog() < commands.len() {
                tokio::task::yield_now().await;
            }
            let _thread = writer.spawn();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        (store, handle, results, dir)
    }

    #[test]
    fn waiting_commands_share_one_commit_and_failures_stay_their_own() {
        // 200 commands: creates, a duplicate of an earlier create in the same batch, and revokes
        // of tokens that do not exist. One commit; each caller its own answer.
        let mut commands: Vec<Command> = (0..190).map(|i| create(&format!("tok_{i:012}"))).collect();
        commands.insert(50, create("tok_000000000007"));
        for i in 0..9 {
            commands.insert(
                i * 20,
                Command::Token(TokenCommand::Revoke { id: format!("tok_missing{i}"), tenant: None, reason: None }),
            );
        }
        let (store, handle, results, _dir) = run_queued(&commands, 1024);
        assert_eq!(handle.stats().commits(), 1, "all waiting commands commit together");
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let not_found = results.iter().filter(|r| matches!(r, Err(CommandError::NotFound { .. }))).count();
        let conflicts = results.iter().filter(|r| matches!(r, Err(CommandError::Conflict { .. }))).count();
        assert_eq!((ok, not_found, conflicts), (190, 9, 1));
        for (command, result) in commands.iter().zip(&results) {
            if let (Command::Token(TokenCommand::Create { id, .. }), Ok(c)) = (command, result) {
                assert_eq!(c.entries[0].subjects, vec![id.clone()], "each caller gets its own entry");
            }
        }
        let txn = store.read().unwrap();
        assert_eq!(read::tokens(&txn, None, 1_000).unwrap().len(), 190);
        assert_eq!(read::ledger_len(&txn).unwrap(), 190);
        assert!(crate::machine::verify(&txn).unwrap().ok);
    }

    #[test]
    fn batches_are_bounded_by_batch_max() {
        let commands: Vec<Command> = (0..100).map(|i| create(&format!("tok_{i:012}"))).collect();
        let (_store, handle, results, _dir) = run_queued(&commands, 10);
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(handle.stats().commits(), 10);
    }

    #[test]
    fn subscribers_see_entries_only_after_commit_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(&dir.path().join("s.redb")).unwrap();
        let (handle, writer) = channel(store.clone(), Arc::new(ManualClock::new(0)), WriterOptions::seeded(7)).unwrap();
        let mut events = handle.subscribe();
        let _thread = writer.spawn();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            for i in 0..5 {
                handle.submit(Actor { name: "t".into() }, create(&format!("tok_{i:012}"))).await.unwrap();
            }
            for seq in 1..=5u64 {
                let entry = events.recv().await.unwrap();
                assert_eq!(entry.seq, seq);
                // Durable before published: a fresh snapshot already holds it.
                let txn = store.read().unwrap();
                assert!(read::ledger_after(&txn, seq - 1, 1).unwrap()[0].seq == seq);
            }
        });
    }
}
