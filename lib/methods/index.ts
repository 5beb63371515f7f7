// The built-in methods. A new method is a file in this folder plus one line here.
import { registerMethod } from './registry.js';
import { rtn } from './rtn.js';
import { teq } from './teq.js';
import { gptq } from './gptq.js';
import { efficientqat } from './efficientqat.js';
import { fptquant } from './fptquant.js';

registerMethod(rtn);
registerMethod(teq);
registerMethod(gptq);
registerMethod(efficientqat);
registerMethod(fptquant);

export { getMethod, methodNames, registerMethod } from './registry.js';
export type { MethodContext, MethodRun, ProgressEvent, QuantMethod, TrainOptions, TrainState } from './types.js';
