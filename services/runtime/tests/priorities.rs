//! Where a module's work runs: background tasks on threads the kernel runs after the
//! listeners', and serving tasks (which take locks the listeners' reads wait for) on a
//! thread at the listeners' own priority.
#![cfg(target_os = "linux")]

use std::net::SocketAddr;

use ratemesh_bus::{Bus, BusOptions};
use ratemesh_runtime::{App, Context, Readiness, ServiceModule, Settings};
use tokio::sync::oneshot;

/// The calling thread's name and nice value.
fn here() -> (Option<String>, i32) {
    let nice =
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("getpriority");
    (std::thread::current().name().map(str::to_owned), nice)
}

#[tokio::test]
async fn serving_tasks_keep_the_listeners_priority_and_background_tasks_give_way() {
    ratemesh_runtime::telemetry::init_for_tests();
    let mut settings = Settings::default();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    settings.server.grpc_addr = any;
    settings.server.http_addr = any;
    settings.server.admin_addr = any;
    settings.server.background_runtime = true;
    settings.server.background_threads = 1;
    settings.server.background_nice = 5;
    let ctx = Context::new(
        settings,
        Bus::memory(BusOptions::embedded()).expect("embedded bus"),
    );
    let readiness = Readiness::new();
    readiness.set(true);

    let (background_tx, background) = oneshot::channel();
    let (serving_tx, serving) = oneshot::channel();
    let (stop_background, stop_serving) = (ctx.shutdown().clone(), ctx.shutdown().clone());
    let module = ServiceModule::new("where", readiness)
        .task("background work", async move {
            let _ = background_tx.send(here());
            stop_background.cancelled().await;
            Ok(())
        })
        .serving_task("serving work", async move {
            let _ = serving_tx.send(here());
            stop_serving.cancelled().await;
            Ok(())
        });
    let app = App::bind(&ctx, vec![module]).await.expect("bind");
    let (stop, stopped) = oneshot::channel::<()>();
    // The listeners' runtime is this test's: the app runs on this thread.
    let listener = here();
    let running = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));

    let (background_thread, background_nice) = background.await.expect("background task ran");
    let (serving_thread, serving_nice) = serving.await.expect("serving task ran");
    assert_eq!(background_thread.as_deref(), Some("ratemesh-background"));
    assert_eq!(background_nice, (listener.1 + 5).min(19));
    assert_eq!(serving_thread.as_deref(), Some("ratemesh-serving"));
    assert_eq!(
        serving_nice, listener.1,
        "a serving task runs at the listeners' priority"
    );

    let _ = stop.send(());
    running.await.expect("join").expect("clean stop");
}
