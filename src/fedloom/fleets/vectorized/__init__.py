"""The vectorized fleet: K clients trained as one batched ``torch.func`` computation.

``VectorizedFleet`` is the fleet (``fleet.kind = vectorized``, ``fleet.chunk`` clients stacked at
once, ``fleet.threads`` torch threads); ``VectorizedTrainer.fit_many(tasks)`` is the engine the
process and distributed fleets call on their own share of a cohort (``fleet.vectorize``).

What to expect:

- Results agree with the serial fleet within float tolerance, not bitwise (stated and checked in
  tests/fleets/test_vectorized.py and test_vectorized_agreement.py: 1e-5 absolute on every
  parameter after 3 rounds, at 1 and 2 threads; observed <= 2e-7). Any two summation orders
  (this fleet's, or the serial fleet's at another thread count) can part further where a ReLU
  pre-activation is within rounding of 0 and changes sign: one such step on MNIST/Dirichlet
  moves the serial fleet's own 1- and 2-thread models 9.6e-4 apart after 2 rounds.
- Every client keeps its own batches (the serial trainer's shuffle streams), hyperparameters
  (lr, momentum, weight decay, epochs or steps; batch sizes are grouped) and step count. Short
  batches and finished clients are masked, never padded with fake examples.
- The step is ``vmap(grad_and_value(loss))`` over ``functional_call``; after a shape's first few
  calls it is recorded (``make_fx``) and replayed by TorchScript's interpreter (no Python
  between ops), with plain SGD updates fused into the weight gradients' matmuls
  (:mod:`.kernel`), also on steps where some clients have no batch left. ``fleet.compile``
  puts the recorded step through ``torch.compile`` (:mod:`.compiled`: once per client-count
  bucket, cached across rounds); ``auto`` compiles on CUDA only: on CPU it was measured
  slower, on CUDA it is expected to pay (not yet measured).
- Layers that would be silently wrong are refused when the fleet is built, naming the layer
  (batch norm, dropout, modules that update buffers or draw random numbers: :mod:`.check`).
- Convolutions with few input channels per group run one client after another on CPU (a
  warning says so once), the rest of the model batched (:mod:`.conv`). On CPU the CNN is
  compute bound and gains little from batching (about 1.0x the serial fleet; 1.1x with
  ``fleet.chunk=2``); the 2NN is where this fleet pays (about 4.3x the plain loop, 2 cores).
- On CPU a chunk is trained as ``fleet.threads`` parts at once, each on one torch thread (plain
  local SGD; bit for bit the models of one part): a 2-thread OpenMP matmul stalls at every
  barrier on a busy machine (W1 fit 0.30 s in parts vs 4.5 s, load 3-6), at the price of the
  parts sharing the GIL on a quiet one (0.071 vs 0.059 s, load 2.5). A pass's batches are
  gathered once, not per step.
- The algorithm's hooks run as in the serial trainer: ``extra_loss``/``correct_grads`` per
  client and step (a Python loop over the chunk), ``before`` per client on the serial trainer,
  each extra pass (Ditto's personal model) as another batched pass, ``finish`` per result.
"""

from fedloom.fleets.vectorized.fleet import VectorizedFleet
from fedloom.fleets.vectorized.trainer import VectorizedTrainer

__all__ = ["VectorizedFleet", "VectorizedTrainer"]
