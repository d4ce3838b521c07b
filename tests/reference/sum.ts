// A float64 sum with Neumaier's compensation, for the references whose value is differentiated
// by finite differences: those divide the sum's rounding by 2h, and a plain sum rounds to about
// sqrt(N) ulps of the sum of |terms|, which can swamp a small gradient (policy_loss.ts says when).
export class CompensatedSum {
  private sum = 0;
  private comp = 0;

  add(term: number): void {
    const s = this.sum + term;
    this.comp += Math.abs(this.sum) >= Math.abs(term) ? this.sum - s + term : term - s + this.sum;
    this.sum = s;
  }

  get value(): number {
    return this.sum + this.comp;
  }
}
