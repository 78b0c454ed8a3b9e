//! Tutorial 2, Work queues, with RabbitMQ's own programs: `python/new_task.py` and
//! `python/worker.py` (pika) against mini-broker, alone and mixed with this crate's
//! `new_task` and `worker`, in the tutorial's scenarios: round-robin, a killed worker's
//! task redelivered to the other, prefetch 1. The pika-only cast runs against RabbitMQ too,
//! which shows that the Python programs are the tutorial's.
//!
//! Skipped (loudly) when python3 cannot import pika, unless `REQUIRE_RABBITMQ=1`.

mod support;

use support::work_queues::{
    busy_worker_gets_nothing_new, interrupted_worker, killed_worker, on_rabbitmq, round_robin,
    Cast, Client,
};
use support::*;

const PIKA: Cast = Cast {
    producer: Client::Pika,
    workers: [Client::Pika, Client::Pika],
};

/// A mini-broker, when pika is there to talk to it.
fn mini_broker_with_pika(test: &str) -> Option<MiniBroker> {
    pika(test).then(MiniBroker::start)
}

#[test]
fn pika_workers_take_turns_on_mini_broker() {
    let Some(broker) = mini_broker_with_pika("pika_workers_take_turns_on_mini_broker") else {
        return;
    };
    round_robin(&Broker::Mini(&broker), PIKA);
}

#[test]
fn pika_worker_killed_task_goes_to_other_pika_worker_on_mini_broker() {
    let test = "pika_worker_killed_task_goes_to_other_pika_worker_on_mini_broker";
    let Some(broker) = mini_broker_with_pika(test) else {
        return;
    };
    killed_worker(&Broker::Mini(&broker), PIKA);
}

#[test]
fn pika_workers_prefetch_one_skips_busy_worker_on_mini_broker() {
    let test = "pika_workers_prefetch_one_skips_busy_worker_on_mini_broker";
    let Some(broker) = mini_broker_with_pika(test) else {
        return;
    };
    busy_worker_gets_nothing_new(&Broker::Mini(&broker), PIKA);
}

#[test]
fn pika_worker_interrupted_task_goes_to_other_pika_worker_on_mini_broker() {
    let test = "pika_worker_interrupted_task_goes_to_other_pika_worker_on_mini_broker";
    let Some(broker) = mini_broker_with_pika(test) else {
        return;
    };
    interrupted_worker(&Broker::Mini(&broker), PIKA);
}

#[test]
fn pika_producer_rust_workers_take_turns_on_mini_broker() {
    let test = "pika_producer_rust_workers_take_turns_on_mini_broker";
    let Some(broker) = mini_broker_with_pika(test) else {
        return;
    };
    let cast = Cast {
        producer: Client::Pika,
        workers: [Client::Rust, Client::Rust],
    };
    round_robin(&Broker::Mini(&broker), cast);
}

#[test]
fn rust_producer_pika_workers_take_turns_on_mini_broker() {
    let test = "rust_producer_pika_workers_take_turns_on_mini_broker";
    let Some(broker) = mini_broker_with_pika(test) else {
        return;
    };
    let cast = Cast {
        producer: Client::Rust,
        workers: [Client::Pika, Client::Pika],
    };
    round_robin(&Broker::Mini(&broker), cast);
}

/// One Rust and one pika worker: whichever is killed, the other gets the task.
#[test]
fn mixed_workers_killed_task_goes_to_the_other_kind_on_mini_broker() {
    let test = "mixed_workers_killed_task_goes_to_the_other_kind_on_mini_broker";
    let Some(broker) = mini_broker_with_pika(test) else {
        return;
    };
    let cast = Cast {
        producer: Client::Pika,
        workers: [Client::Rust, Client::Pika],
    };
    killed_worker(&Broker::Mini(&broker), cast);
    round_robin(&Broker::Mini(&broker), cast);
}

/// One Rust and one pika worker with prefetch 1: whichever is busy, the other takes the
/// new tasks.
#[test]
fn mixed_workers_prefetch_one_skips_busy_worker_on_mini_broker() {
    let test = "mixed_workers_prefetch_one_skips_busy_worker_on_mini_broker";
    let Some(broker) = mini_broker_with_pika(test) else {
        return;
    };
    let cast = Cast {
        producer: Client::Rust,
        workers: [Client::Pika, Client::Rust],
    };
    busy_worker_gets_nothing_new(&Broker::Mini(&broker), cast);
}

// The Python programs against RabbitMQ, the reference the mini-broker runs are held to.
// The tests take turns: `task_queue` is a fixed name.

#[test]
fn pika_workers_take_turns_on_rabbitmq() {
    let test = "pika_workers_take_turns_on_rabbitmq";
    if pika(test) {
        on_rabbitmq(test, round_robin, PIKA);
    }
}

#[test]
fn pika_worker_killed_task_goes_to_other_pika_worker_on_rabbitmq() {
    let test = "pika_worker_killed_task_goes_to_other_pika_worker_on_rabbitmq";
    if pika(test) {
        on_rabbitmq(test, killed_worker, PIKA);
    }
}

#[test]
fn pika_workers_prefetch_one_skips_busy_worker_on_rabbitmq() {
    let test = "pika_workers_prefetch_one_skips_busy_worker_on_rabbitmq";
    if pika(test) {
        on_rabbitmq(test, busy_worker_gets_nothing_new, PIKA);
    }
}

#[test]
fn mixed_workers_killed_task_goes_to_the_other_kind_on_rabbitmq() {
    let test = "mixed_workers_killed_task_goes_to_the_other_kind_on_rabbitmq";
    let cast = Cast {
        producer: Client::Pika,
        workers: [Client::Rust, Client::Pika],
    };
    if pika(test) {
        on_rabbitmq(test, killed_worker, cast);
    }
}
