/** walship's version, printed by `walship --version`. */
export const VERSION = "0.1.0";
