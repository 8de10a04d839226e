//! Collectives and the rendezvous: the in-process stand-in's sums, gathers and broadcasts on
//! CPU devices, its timeout when a rank never joins, the TCP rendezvous on loopback (between
//! threads, and with a child process that dies), a silent peer, an unreachable rank 0; and, on
//! a GPU, a world of one NCCL rank.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_compiler::DType;
use kiln_runtime::collective::{Communicator, DistEnv, LocalGroup, Rendezvous};
use kiln_runtime::Device;

fn on_threads<T: Send + 'static>(
    world: usize,
    timeout: Duration,
    body: impl Fn(LocalGroup) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let body = Arc::new(body);
    let threads: Vec<_> = LocalGroup::ranks(world, timeout)
        .into_iter()
        .map(|rank| {
            let body = body.clone();
            std::thread::spawn(move || body(rank))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn the_stand_in_sums_gathers_and_broadcasts_across_threads() {
    let results = on_threads(3, Duration::from_secs(30), |comm| {
        let device = Device::cpu();
        let r = comm.rank() as f32;
        let mut a = device.upload(&[r, 10.0 * r]).unwrap();
        let mut b = device.upload(&[half::bf16::from_f32(r + 1.0)]).unwrap();
        comm.all_reduce_sum(&mut [&mut a, &mut b], "a and b")
            .unwrap();
        let mut c = device.upload(&[r + 1.0]).unwrap();
        comm.reduce_sum(&mut [&mut c], 1, "c").unwrap();
        let mut d = device.upload(&[7 + comm.rank() as i32]).unwrap();
        comm.broadcast(&mut [&mut d], 2, "d").unwrap();
        let mut gathered = device.alloc(DType::F32, 6).unwrap();
        let mine = device.upload(&[r, -r]).unwrap();
        comm.all_gather(&mine, &mut gathered, "pairs").unwrap();
        let whole = device.upload(&[r, 1.0, 2.0 * r]).unwrap();
        let mut part = device.alloc(DType::F32, 1).unwrap();
        comm.reduce_scatter_sum(&whole, &mut part, "thirds")
            .unwrap();
        comm.join().unwrap();
        (
            a.download::<f32>().unwrap(),
            b.download::<half::bf16>().unwrap()[0].to_f32(),
            c.download::<f32>().unwrap()[0],
            d.download::<i32>().unwrap()[0],
            gathered.download::<f32>().unwrap(),
            part.download::<f32>().unwrap()[0],
        )
    });
    for (rank, (a, b, c, d, gathered, part)) in results.into_iter().enumerate() {
        assert_eq!(a, vec![3.0, 30.0]);
        assert_eq!(b, 6.0);
        // Only the root of a reduce gets the sum.
        assert_eq!(c, if rank == 1 { 6.0 } else { rank as f32 + 1.0 });
        assert_eq!(d, 9);
        assert_eq!(gathered, vec![0.0, -0.0, 1.0, -1.0, 2.0, -2.0]);
        assert_eq!(part, [3.0, 3.0, 6.0][rank]);
    }
}

#[test]
fn a_rank_that_never_joins_is_an_error_within_the_timeout() {
    let started = Instant::now();
    let results = on_threads(3, Duration::from_millis(300), |comm| {
        let device = Device::cpu();
        let mut a = device.upload(&[1.0f32]).unwrap();
        if comm.rank() == 1 {
            return None; // "dies" before the collective
        }
        Some(
            comm.all_reduce_sum(&mut [&mut a], "layer 3's gradients")
                .unwrap_err()
                .to_string(),
        )
    });
    assert!(started.elapsed() < Duration::from_secs(10));
    for e in results.into_iter().flatten() {
        assert!(
            e.contains("all-reduce of layer 3's gradients") && e.contains("rank(s) 1 did not join"),
            "{e}"
        );
    }
    // Ranks issuing different collectives are told so, not left waiting.
    let results = on_threads(2, Duration::from_secs(30), |comm| {
        let device = Device::cpu();
        let mut a = device.upload(&[1.0f32]).unwrap();
        match comm.rank() {
            0 => comm.all_reduce_sum(&mut [&mut a], "x"),
            _ => comm.broadcast(&mut [&mut a], 0, "x"),
        }
        .unwrap_err()
        .to_string()
    });
    assert!(
        results.iter().any(|e| e.contains("collectives differ")),
        "{results:?}"
    );
    // Buffers that cannot be summed are refused up front.
    let comm = LocalGroup::ranks(1, Duration::from_secs(1)).remove(0);
    let mut ids = Device::cpu().upload(&[1i32]).unwrap();
    let e = comm.all_reduce_sum(&mut [&mut ids], "ids").unwrap_err();
    assert!(e.to_string().contains("only f32 and bf16"), "{e}");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn env(rank: usize, world: usize, port: u16) -> DistEnv {
    DistEnv {
        rank,
        world_size: world,
        local_rank: rank,
        master_addr: "127.0.0.1".into(),
        master_port: port,
    }
}

fn wait_for_failure(meeting: &Rendezvous, within: Duration) -> Option<String> {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if let Some(f) = meeting.watch().failure() {
            return Some(f);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn ranks_meet_over_loopback_tcp_and_a_finished_peer_is_not_a_failure() {
    let port = free_port();
    let id: Vec<u8> = (0..128u32).map(|i| (i * 7) as u8).collect();
    let timeout = Duration::from_secs(20);
    // Rank 2 starts first: joining retries until rank 0 listens.
    let joiners: Vec<_> = [2, 1]
        .into_iter()
        .map(|rank| {
            std::thread::spawn(move || {
                Rendezvous::start(&env(rank, 3, port), || unreachable!(), timeout).unwrap()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let want = id.clone();
    let (host, sent) = Rendezvous::start(&env(0, 3, port), move || Ok(want), timeout).unwrap();
    assert_eq!(sent, id);
    let peers: Vec<(Rendezvous, Vec<u8>)> =
        joiners.into_iter().map(|t| t.join().unwrap()).collect();
    for (_, got) in &peers {
        assert_eq!(got, &id);
    }
    // Finishing (dropping the meeting) says goodbye: nobody reports a failure.
    drop(peers);
    assert_eq!(wait_for_failure(&host, Duration::from_millis(500)), None);
}

#[test]
fn a_failing_rank_tells_the_others_at_once_through_rank_0() {
    let port = free_port();
    let timeout = Duration::from_secs(20);
    let joiners: Vec<_> = [1, 2]
        .into_iter()
        .map(|rank| {
            std::thread::spawn(move || {
                Rendezvous::start(&env(rank, 3, port), || unreachable!(), timeout)
                    .unwrap()
                    .0
            })
        })
        .collect();
    let (host, _) = Rendezvous::start(&env(0, 3, port), || Ok(vec![1; 128]), timeout).unwrap();
    let mut peers: Vec<Rendezvous> = joiners.into_iter().map(|t| t.join().unwrap()).collect();
    let started = Instant::now();
    peers[1].abort("cuda:2 is out of memory");
    let relayed =
        wait_for_failure(&peers[0], Duration::from_secs(5)).expect("rank 1 heard nothing");
    let at_root = wait_for_failure(&host, Duration::from_secs(5)).expect("rank 0 heard nothing");
    for f in [&relayed, &at_root] {
        assert!(f.contains("rank 2 failed: cuda:2 is out of memory"), "{f}");
    }
    // Well within the 20 s timeout: the message, not the silence, stopped them.
    assert!(started.elapsed() < Duration::from_secs(5));
    // The hook sees the failure that happened before it was set.
    let (tx, rx) = std::sync::mpsc::channel();
    host.watch()
        .on_failure(move |f| tx.send(f.to_string()).unwrap());
    assert!(rx.recv().unwrap().contains("rank 2 failed"));
    peers.clear();
}

/// The child process's part of [`a_peer_process_that_dies_is_reported_within_the_timeout`]:
/// joins as rank 1 and exits without goodbye.
fn dying_rank_1(port: &str) -> ! {
    let port: u16 = port.parse().unwrap();
    let (_meeting, id) =
        Rendezvous::start(&env(1, 2, port), || unreachable!(), Duration::from_secs(20)).unwrap();
    println!("child got {} bytes, first {}", id.len(), id[0]);
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Dies: no destructors, so no goodbye; the kernel closes its connection.
    std::process::exit(3);
}

/// Two processes: this test's binary runs itself again as rank 1, which dies after the
/// rendezvous; rank 0 (here) is told within the timeout.
#[test]
fn a_peer_process_that_dies_is_reported_within_the_timeout() {
    if let Ok(port) = std::env::var("KILN_TEST_RENDEZVOUS_PORT") {
        dying_rank_1(&port);
    }
    let port = free_port();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "collective::a_peer_process_that_dies_is_reported_within_the_timeout",
            "--nocapture",
        ])
        .env("KILN_TEST_RENDEZVOUS_PORT", port.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (host, _) = Rendezvous::start(
        &env(0, 2, port),
        || Ok(vec![42; 128]),
        Duration::from_secs(20),
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("child got 128 bytes, first 42"), "{stdout}");
    assert_eq!(output.status.code(), Some(3));
    let failure = wait_for_failure(&host, Duration::from_secs(5)).expect("no failure reported");
    assert!(failure.contains("lost rank 1"), "{failure}");
}

#[test]
fn a_silent_peer_and_an_unreachable_rank_0_are_errors_within_the_timeout() {
    // A "rank 1" that joins and then never sends a heartbeat.
    let port = free_port();
    let silent = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(10);
        let mut s = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("{e}"),
            }
        };
        let mut hello = b"KILN".to_vec();
        hello.extend(1u32.to_le_bytes());
        hello.extend(2u32.to_le_bytes());
        s.write_all(&hello).unwrap();
        let mut id = vec![0u8; 6 + 128];
        s.read_exact(&mut id).unwrap();
        std::thread::sleep(Duration::from_secs(3));
        drop(s);
    });
    let started = Instant::now();
    let (host, _) = Rendezvous::start(
        &env(0, 2, port),
        || Ok(vec![0; 128]),
        Duration::from_millis(400),
    )
    .unwrap();
    let failure = wait_for_failure(&host, Duration::from_secs(2)).expect("no failure reported");
    assert!(failure.contains("rank 1 sent no heartbeat"), "{failure}");
    assert!(started.elapsed() < Duration::from_secs(3));
    silent.join().unwrap();

    // Nobody listens: the joining rank gives up after the timeout, saying where it looked.
    let closed = free_port();
    let started = Instant::now();
    let e = Rendezvous::start(
        &env(1, 2, closed),
        || unreachable!(),
        Duration::from_millis(500),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("could not reach rank 0 at 127.0.0.1"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut nowhere = env(1, 2, closed);
    nowhere.master_addr = "no-such-host.invalid".into();
    let e = Rendezvous::start(&nowhere, || unreachable!(), Duration::from_millis(500))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no-such-host.invalid"), "{e}");
    // Rank 0 whose peers never come says which ranks are missing.
    let e = Rendezvous::start(
        &env(0, 3, free_port()),
        || Ok(vec![]),
        Duration::from_millis(300),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("rank(s) 1, 2 did not join"), "{e}");
}

/// A world of one NCCL rank on GPU 0: NCCL allows it, and it exercises the whole GPU path
/// (the library, the unique id, the communicator's stream, the join).
#[cfg(feature = "cuda")]
#[test]
fn nccl_with_one_rank_all_reduces_on_the_gpu() {
    use kiln_runtime::collective::NcclCommunicator;
    let Some(device) = crate::cuda_or_skip("nccl_with_one_rank_all_reduces_on_the_gpu") else {
        return;
    };
    if let Err(e) = kiln_runtime::collective::nccl_library() {
        println!("nccl_with_one_rank_all_reduces_on_the_gpu: skipped: no NCCL ({e})");
        return;
    }
    let id = NcclCommunicator::unique_id().unwrap();
    let comm = NcclCommunicator::new(&device, 0, 1, &id, Duration::from_secs(60)).unwrap();
    let mut a = device.upload(&[1.0f32, 2.0, 3.0]).unwrap();
    let mut b = device.upload(&[half::bf16::from_f32(4.0)]).unwrap();
    comm.all_reduce_sum(&mut [&mut a, &mut b], "a and b")
        .unwrap();
    comm.broadcast(&mut [&mut a], 0, "a").unwrap();
    let mut whole = device.alloc(DType::F32, 3).unwrap();
    comm.all_gather(&a, &mut whole, "a").unwrap();
    comm.join().unwrap();
    assert_eq!(whole.download::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
    assert_eq!(b.download::<half::bf16>().unwrap()[0].to_f32(), 4.0);
}
