// Band-limited resampling for the softphone's AudioWorklet, any rate to any rate, streaming.
//
// Each output sample is the input convolved with a windowed-sinc low-pass placed at the output
// instant (J. O. Smith's bandlimited interpolation). The one filter both interpolates between input
// samples and band-limits: going down (the microphone's 44.1 or 48 kHz to the telephone's 8 kHz) it
// removes what would alias into the band; going up (8 kHz to the speaker's rate) the images of the
// band. Rates are whole numbers of hertz, so the output instants fall on `phases` distinct fractions
// of an input sample: one set of weights per fraction is computed once (polyphase form), each set
// normalised to sum to 1 (DC passes at exactly unity gain at every phase), and per output sample the
// work is one dot product.
//
// TELEPHONE is the design both directions use: flat (Kaiser ripple, under 0.001 dB) to 3400 Hz,
// at least 80 dB down from 4600 Hz, so nothing aliases into (or images out of) the telephone band;
// -6 dB at 4 kHz. Linear phase; the cost of the filter's length is latency: it waits for
// `halfWidthS` (about 2.1 ms) of input beyond each output instant. The Python tests measure it
// (tests/web/test_worklet_dsp.py).

export const TELEPHONE = Object.freeze({ cutoffHz: 4000, transitionHz: 1200, attenuationDb: 80 });

const MAX_PHASES = 4096; // standard rates need at most 441 (8000 <-> 44100)

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

function besselI0(x) {
  // Power series of the modified Bessel function of order 0; converges fast for Kaiser's betas.
  let sum = 1;
  let term = 1;
  for (let k = 1; k < 50; k++) {
    term *= (x / (2 * k)) ** 2;
    sum += term;
    if (term < sum * 1e-17) break;
  }
  return sum;
}

function sinc(x) {
  return x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
}

export class Resampler {
  constructor(inRate, outRate, design = TELEPHONE) {
    if (!(Number.isInteger(inRate) && Number.isInteger(outRate) && inRate > 0 && outRate > 0)) {
      throw new RangeError(`rates must be whole hertz, not ${inRate} and ${outRate}`);
    }
    const { cutoffHz, transitionHz, attenuationDb } = design;
    const divisor = gcd(inRate, outRate);
    this.inRate = inRate;
    this.outRate = outRate;
    this.step = inRate / divisor; // input samples per `phases` outputs
    this.phases = outRate / divisor;
    if (this.phases > MAX_PHASES) throw new RangeError(`${inRate} -> ${outRate} Hz needs too many phases`);
    // Kaiser's design formulas: the window's length for this transition width and attenuation.
    const beta = attenuationDb > 50 ? 0.1102 * (attenuationDb - 8.7) : 0.5842 * (attenuationDb - 21) ** 0.4 + 0.07886 * (attenuationDb - 21);
    this.halfWidthS = (attenuationDb - 7.95) / (14.36 * transitionHz) / 2;
    const half = this.halfWidthS * inRate; // the window's half-width in input samples
    this.reach = Math.ceil(half); // input samples needed beyond an output instant
    this.taps = 2 * this.reach;
    const scale = (2 * cutoffHz) / inRate; // sinc zero crossings per input sample
    const norm = besselI0(beta);
    this.weights = new Float64Array(this.phases * this.taps);
    for (let phase = 0; phase < this.phases; phase++) {
      const fraction = phase / this.phases; // the output instant, past input sample `base`
      const row = phase * this.taps;
      let sum = 0;
      for (let j = 0; j < this.taps; j++) {
        const offset = j - this.reach + 1 - fraction; // input sample base-reach+1+j, from the instant
        const ratio = offset / half;
        const w = Math.abs(ratio) >= 1 ? 0 : sinc(scale * offset) * besselI0(beta * Math.sqrt(1 - ratio * ratio)) / norm;
        this.weights[row + j] = w;
        sum += w;
      }
      for (let j = 0; j < this.taps; j++) this.weights[row + j] /= sum;
    }
    this.reset();
  }

  /** Forget all input (a cleared playback buffer starts afresh, with no tail of the old audio). */
  reset() {
    // Input sample i is at history[i - this.first]; `reach - 1` zeros stand before the first sample.
    this.history = new Float64Array(Math.max(4096, 4 * this.taps));
    this.first = -(this.reach - 1);
    this.length = this.reach - 1;
    this.base = 0; // the next output's instant is input sample `base` plus `phase / phases`
    this.phase = 0;
  }

  /** Resample a chunk of any length; returns every output sample it makes possible, at once. */
  process(input) {
    this.append(input);
    const last = this.first + this.length - 1; // newest input sample
    const count = this.pending(last);
    const out = new Float32Array(count);
    const { weights, taps, history, phases } = this;
    const whole = Math.floor(this.step / phases);
    const rest = this.step % phases;
    for (let n = 0; n < count; n++) {
      const start = this.base - this.reach + 1 - this.first;
      const row = this.phase * taps;
      let acc = 0;
      for (let j = 0; j < taps; j++) acc += history[start + j] * weights[row + j];
      out[n] = acc;
      this.base += whole;
      this.phase += rest;
      if (this.phase >= phases) {
        this.phase -= phases;
        this.base += 1;
      }
    }
    return out;
  }

  pending(last) {
    // Outputs whose window ends at or before `last`: instants up to input sample last - reach.
    let count = 0;
    let base = this.base;
    let phase = this.phase;
    const whole = Math.floor(this.step / this.phases);
    const rest = this.step % this.phases;
    while (base + this.reach <= last) {
      count++;
      base += whole;
      phase += rest;
      if (phase >= this.phases) {
        phase -= this.phases;
        base += 1;
      }
    }
    return count;
  }

  append(input) {
    // Drop what no future output needs, then make room and copy the chunk in.
    const keepFrom = this.base - this.reach + 1;
    const drop = Math.max(0, keepFrom - this.first);
    if (drop > 0) {
      this.history.copyWithin(0, drop, this.length);
      this.length -= drop;
      this.first += drop;
    }
    if (this.length + input.length > this.history.length) {
      const grown = new Float64Array(2 * (this.length + input.length));
      grown.set(this.history.subarray(0, this.length));
      this.history = grown;
    }
    this.history.set(input, this.length);
    this.length += input.length;
  }
}
