// Dependency-free SVG line plots of loss curves (raw values and a moving average).
export function lossCurveSvg(curve: number[], title: string): string {
  const W = 640, H = 360, L = 60, R = 20, T = 40, B = 40;
  const finite = curve.filter(Number.isFinite);
  const lo = Math.min(...finite), hi = Math.max(...finite);
  const span = hi - lo || 1;
  const x = (i: number) => L + ((W - L - R) * i) / Math.max(1, curve.length - 1);
  const y = (v: number) => T + (H - T - B) * (1 - (v - lo) / span);
  const line = (vals: number[]) => vals.map((v, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join('');
  const k = Math.max(1, Math.floor(curve.length / 50));
  const avg = curve.map((_, i) => {
    const a = curve.slice(Math.max(0, i - k + 1), i + 1);
    return a.reduce((s, v) => s + v, 0) / a.length;
  });
  const esc = (s: string) => s.replace(/[<&>]/g, (c) => ({ '<': '&lt;', '&': '&amp;', '>': '&gt;' })[c]!);
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">
<rect width="${W}" height="${H}" fill="white"/>
<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">${esc(title)}: training loss</text>
<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="black"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="black"/>
<text x="${L - 6}" y="${y(hi) + 4}" text-anchor="end">${hi.toPrecision(4)}</text>
<text x="${L - 6}" y="${y(lo) + 4}" text-anchor="end">${lo.toPrecision(4)}</text>
<text x="${L}" y="${H - B + 16}" text-anchor="middle">1</text>
<text x="${W - R}" y="${H - B + 16}" text-anchor="middle">${curve.length}</text>
<text x="${(W + L - R) / 2}" y="${H - 8}" text-anchor="middle">step</text>
<path d="${line(curve)}" fill="none" stroke="#9ab" stroke-width="1"/>
<path d="${line(avg)}" fill="none" stroke="#c33" stroke-width="2"/>
</svg>
`;
}

/** Several loss curves (a method's stages: EfficientQAT's Block-AP blocks, then E2E-QP), one panel each, stacked. */
export function lossCurvesSvg(curves: { label: string; losses: number[] }[], title: string): string {
  const H = 360;
  const panels = curves.filter((c) => c.losses.length > 0).map((c, i) => {
    const body = lossCurveSvg(c.losses, `${title}, ${c.label}`).replace(/^<svg[^>]*>\n/, '').replace(/<\/svg>\n$/, '');
    return `<g transform="translate(0, ${i * H})">\n${body}</g>\n`;
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="640" height="${panels.length * H}" font-family="sans-serif" font-size="12">\n${panels.join('')}</svg>\n`;
}
